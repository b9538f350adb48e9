"""Stage 4: reward-model losses and metrics, preference data, reward routing by row kind and step schedules, the
reward-model reward, and a tiny reward model that learns."""

import json
from pathlib import Path

import hydra
import lightning as L
import pytest
import torch
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from data_modules import MixedPromptDataModule, PointwisePreferenceDataModule, PreferenceDataModule
from r1lab.data.io import DataError
from r1lab.maths.formats import cold_start_response, summary_of
from r1lab.maths.reward_models import cached_reward_model, reward_model_reward
from r1lab.maths.rewards import weighted_rewards
from r1lab.stages.reward_model import bradley_terry_loss, pointwise_loss
from r1lab.train import train


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_bradley_terry_loss_and_pairwise_accuracy_on_hand_made_scores():
    scores = torch.tensor([3.0, 1.0, 0.5, 2.0, 1.0, 2.0, 0.5, 2.0])    # chosen 3, 1, 0.5, 2 / rejected 1, 2, 0.5, 2
    labels = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0])
    loss, margins, targets = bradley_terry_loss(scores, labels)
    assert margins.tolist() == [2.0, -1.0, 0.0, 0.0] and targets.tolist() == [1.0] * 4
    expected = sum(-torch.nn.functional.logsigmoid(torch.tensor(m)) for m in (2.0, -1.0, 0.0, 0.0)) / 4
    assert loss.item() == pytest.approx(expected.item())
    accuracy = BinaryAccuracy()(torch.sigmoid(margins), targets.long())   # as RewardModelModule scores it
    assert accuracy.item() == 0.25                                        # a tie is not a win
    assert bradley_terry_loss(torch.tensor([9.0, -9.0]), torch.tensor([1, 0]))[0].item() < 1e-3
    with pytest.raises(ValueError, match="needs pairs"):
        bradley_terry_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0]))


def test_pointwise_loss_and_auc_on_hand_made_scores():
    scores, labels = torch.tensor([2.0, -1.0, 0.5, -2.0]), torch.tensor([1, 0, 1, 0])
    loss, logits, targets = pointwise_loss(scores, labels)
    probs = torch.sigmoid(scores)
    expected = -(torch.log(probs[0]) + torch.log(1 - probs[1]) + torch.log(probs[2]) + torch.log(1 - probs[3])) / 4
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5) and torch.equal(logits, scores)
    assert BinaryAUROC()(torch.sigmoid(scores), labels).item() == 1.0
    auc = BinaryAUROC()(torch.sigmoid(torch.tensor([0.9, 0.4, 0.5, 0.1])), torch.tensor([1, 1, 0, 0]))
    assert auc.item() == pytest.approx(0.75)                               # one of four (good, bad) pairs misordered
    assert BinaryAccuracy()(torch.sigmoid(scores), targets.long()).item() == 1.0


def recorder(name: str, calls: list, value: float):
    """A reward that records the rows it was asked about and gives each `value`."""
    def reward(completions, id, **_):
        calls.append((name, list(id)))
        return [value] * len(completions)
    return reward


def test_rewards_are_routed_by_kind_row_by_row():
    calls: list = []
    rewards = {"accuracy": {"fn": recorder("accuracy", calls, 1.0), "kinds": ["reasoning"]},
               "helpfulness": {"fn": recorder("helpfulness", calls, 0.25), "kinds": ["general"], "weight": 2.0},
               "format": {"fn": recorder("format", calls, 0.5)}}
    kinds = ["reasoning", "general", "general", "reasoning", "other"]
    columns = {"id": ["r0", "g1", "g2", "r3", "o4"], "kind": kinds}
    total, raw = weighted_rewards(rewards, ["c"] * 5, columns)
    assert dict(calls) == {"accuracy": ["r0", "r3"], "helpfulness": ["g1", "g2"],
                           "format": ["r0", "g1", "g2", "r3", "o4"]}
    for i, kind in enumerate(kinds):
        assert (raw["accuracy"][i] is not None) == (kind == "reasoning")
        assert (raw["helpfulness"][i] is not None) == (kind == "general")
        assert raw["format"][i] == 0.5
    assert total == [1.5, 1.0, 1.0, 1.5, 0.5]                             # not-applicable rewards count as absent
    with pytest.raises(ValueError, match="no 'kind' column"):
        weighted_rewards(rewards, ["c"], {"id": ["x"]})


def test_schedule_switches_a_reward_on_at_its_step():
    calls: list = []
    rewards = {"format": {"fn": recorder("format", calls, 1.0)},
               "helpfulness": {"fn": recorder("helpfulness", calls, 1.0), "schedule": {5: 1.0, 8: 0.5}}}
    columns = {"id": ["a", "b"]}
    totals = {step: weighted_rewards(rewards, ["c", "c"], columns, step=step) for step in (0, 4, 5, 7, 8, 100)}
    assert [totals[s][0] for s in (0, 4, 5, 7, 8, 100)] == [[1.0, 1.0]] * 2 + [[2.0, 2.0]] * 2 + [[1.5, 1.5]] * 2
    assert totals[4][1]["helpfulness"] == [None, None] and totals[5][1]["helpfulness"] == [1.0, 1.0]
    assert [name for name, _ in calls].count("helpfulness") == 4          # never called while switched off


def test_summary_reward_ignores_the_reasoning_block(reward_model_dirs):
    path = reward_model_dirs["helpfulness"]
    completions = [cold_start_response(cot, "The answer is \\boxed{5}.") for cot in ("2 + 3 = 5.", "I guess 7 + 1.")]
    prompts = ["What is 2 + 3?"] * 2
    summary = reward_model_reward(completions, prompts, model_path=path, view=summary_of)
    whole = reward_model_reward(completions, prompts, model_path=path)
    assert summary[0] == pytest.approx(summary[1]) and whole[0] != pytest.approx(whole[1])
    assert all(0 < s < 1 for s in summary + whole)
    bare = reward_model_reward(["The answer is \\boxed{5}."], prompts[:1], model_path=path)
    assert summary[0] == pytest.approx(bare[0])
    batched = reward_model_reward(completions * 3, prompts * 3, model_path=path, batch_size=2)  # padding: no effect
    assert batched == pytest.approx(whole * 3, abs=1e-5)
    hits = cached_reward_model.cache_info().hits
    reward_model_reward(completions, prompts, model_path=path)
    assert cached_reward_model.cache_info().hits == hits + 1                 # loaded once, then cached


BAD_ROWS = {  # (module, raw second row, error fragment)
    "pair_missing_side": (PreferenceDataModule, {"prompt": "q", "chosen": "a"}, "missing field 'rejected'"),
    "pair_wrong_type": (PreferenceDataModule, {"prompt": "q", "chosen": 3, "rejected": "b"},
                        "field 'chosen': expected str, got int"),
    "pair_empty": (PreferenceDataModule, {"prompt": "q", "chosen": "a", "rejected": " "}, "field 'rejected' is empty"),
    "label_out_of_range": (PointwisePreferenceDataModule, {"prompt": "q", "response": "a", "label": 2},
                           "field 'label': expected a number in [0, 1], got int"),
    "label_bool": (PointwisePreferenceDataModule, {"prompt": "q", "response": "a", "label": True},
                   "field 'label': expected a number in [0, 1], got bool"),
    "label_missing": (PointwisePreferenceDataModule, {"prompt": "q", "response": "a"}, "missing field 'label'"),
}


@pytest.mark.parametrize("name", sorted(BAD_ROWS))
def test_preference_bad_rows_fail_with_file_line_and_field(tmp_path, tokenizer_dir, name):
    module, bad, fragment = BAD_ROWS[name]
    good = {"prompt": "q", "chosen": "a", "rejected": "b", "response": "a", "label": 1}
    path = write_jsonl(tmp_path / "bad.jsonl", [good, bad])
    with pytest.raises(DataError) as err:
        module(str(path), None, str(tokenizer_dir)).setup("fit")
    assert f"{path}:2: {fragment}" in str(err.value)


def test_preference_batches_hold_chosen_then_rejected(tmp_path, tokenizer_dir):
    rows = [{"question": f"q{i}", "chosen": f"good {i}", "rejected": "bad " * (1 + i)} for i in range(5)]
    rows.append({"question": "q5", "chosen": "ok", "rejected": "long " * 300})
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    data = PreferenceDataModule(str(path), str(path), str(tokenizer_dir), max_length=100, batch_size=2,
                                columns_map={"question": "prompt"})
    data.setup("fit")
    assert data.stats["train"]["too_long"] == 1 and data.stats["train"]["kept"] == 5
    batch = next(iter(data.val_dataloader()))
    assert batch["labels"].tolist() == [1.0, 1.0, 0.0, 0.0] and batch["input_ids"].shape[0] == 4
    text = [data.tokenizer.decode(ids[mask.bool()]) for ids, mask in zip(batch["input_ids"], batch["attention_mask"])]
    assert [t.split("assistant\n")[1] for t in text] == ["good 0<|im_end|>", "good 1<|im_end|>", "bad <|im_end|>",
                                                         "bad bad <|im_end|>"]
    assert all(m[: int(m.sum())].all() for m in batch["attention_mask"])   # right padding


def test_pair_batches_are_length_bucketed_and_labelled_batches_keep_both_labels(tmp_path, tokenizer_dir):
    """Pairs of one length go together (padding costs the reward model's step); labelled responses whose length gives
    the label away stay shuffled, so a batch still holds both labels."""
    words = [1 + (7 * i) % 40 for i in range(64)]                          # 64 lengths, scrambled
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": f"q{i}", "chosen": "good " * n, "rejected": "bad " * n}
                                                  for i, n in enumerate(words)])
    data = PreferenceDataModule(str(pairs), None, str(tokenizer_dir), batch_size=8)
    data.setup("fit")
    spread = []
    for batch in data.train_dataloader():                                  # B chosen rows, then their B rejected rows
        lengths = batch["attention_mask"].sum(1).view(2, -1).max(0).values  # [B]: the longer side of each pair
        spread.append(int(lengths.max() - lengths.min()))
    tokens = [max(map(len, e["input_ids"])) for e in data.examples["train"]]   # in the file's scrambled order
    unsorted = [max(tokens[i:i + 8]) - min(tokens[i:i + 8]) for i in range(0, 64, 8)]
    assert sum(spread) * 3 < sum(unsorted), (spread, unsorted)
    labelled = write_jsonl(tmp_path / "labelled.jsonl", [{"prompt": f"q{i}", "response": "no " * (1 + i % 4) if i % 2
                                                          else "yes " * (20 + i % 7), "label": i % 2}
                                                         for i in range(64)])
    data = PointwisePreferenceDataModule(str(labelled), None, str(tokenizer_dir), batch_size=8)
    data.setup("fit")
    assert all(0 < b["labels"].mean() < 1 for b in data.train_dataloader())


def test_mixed_prompts_batches_hold_both_kinds(tmp_path):
    reasoning = write_jsonl(tmp_path / "r.jsonl", [{"id": f"r{i}", "prompt": f"{i} + 1?", "answer": i + 1,
                                                    "task": "arithmetic" if i % 2 else "countdown", "numbers": [i, 1]}
                                                   for i in range(12)])
    general = write_jsonl(tmp_path / "g.jsonl",
                          [{"id": f"g{i}", "prompt": f"say {i}", "answer": str(i)} for i in range(3)])
    vault = write_jsonl(tmp_path / "v.jsonl", [{"id": "v0", "kind": "general", "prompt": "code?", "answer": "",
                                                "secret": "123456"}])
    data = MixedPromptDataModule(str(reasoning), [str(general), str(vault)], str(reasoning), ratio=3.0, batch_size=4,
                                 where={"task": ["arithmetic"]})
    data.setup("fit")
    batches = list(data.train_dataloader())
    assert len(batches) == 2                                               # 6 arithmetic rows, 3 per batch
    for batch in batches:
        assert batch["kind"] == ["reasoning"] * 3 + ["general"]
        assert all(i.startswith("r") for i in batch["id"][:3]) and batch["id"][3][0] in "gv"
    assert sorted(i for b in batches for i in b["id"][:3]) == sorted(f"r{i}" for i in range(1, 12, 2))
    assert {r["kind"] for r in data.rows["val"]} == {"reasoning"}


def test_tiny_reward_model_learns_a_separable_toy_set(compose_train, tmp_path):
    """Pairs whose responses end in 'yes' (chosen) or 'no' (rejected) after random words: held-out pairwise accuracy
    rises from chance to ~1 in a few dozen steps, and the exported model, as a reward, prefers the chosen side."""
    import random

    rng = random.Random(0)
    words = ["apple", "river", "stone", "cloud", "green", "seven", "table", "light", "night", "sugar"]
    say = lambda: " ".join(rng.sample(words, 3))
    pairs = [{"prompt": f"Answer {say()}", "chosen": f"{say()} yes", "rejected": f"{say()} no"} for _ in range(80)]
    train_path, val_path = write_jsonl(tmp_path / "t.jsonl", pairs[:64]), write_jsonl(tmp_path / "v.jsonl", pairs[64:])
    cfg = compose_train("experiment=reward_model_helpfulness", f"data.train_files={train_path}",
                        f"data.val_files={val_path}", "data.batch_size=8", "trainer.max_steps=40",
                        "trainer.val_check_interval=40", "module.optimizer.lr=2e-3", "module.scheduler.warmup_steps=5",
                        "logger=none", "callbacks.model_checkpoint.every_n_train_steps=0")
    L.seed_everything(0)
    data, module = hydra.utils.instantiate(cfg.data), hydra.utils.instantiate(cfg.module)
    data.setup("fit")
    module.configure_model()

    def accuracy() -> float:
        module.model.eval()
        with torch.no_grad():
            margins = [bradley_terry_loss(module._scores(b), b["labels"])[1] for b in data.val_dataloader()]
        module.model.train()
        return (torch.cat(margins) > 0).float().mean().item()

    before = accuracy()
    callbacks = hydra.utils.instantiate(cfg.callbacks.hf_export)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[callbacks], logger=False)
    trainer.fit(module, datamodule=data)
    after = accuracy()
    assert before < 0.8 and after >= 0.95, (before, after)
    assert trainer.callback_metrics["val/accuracy"] == pytest.approx(after)
    export = tmp_path / "run" / "model"
    val = pairs[64:]
    chosen = reward_model_reward([p["chosen"] for p in val], [p["prompt"] for p in val], model_path=export)
    rejected = reward_model_reward([p["rejected"] for p in val], [p["prompt"] for p in val], model_path=export)
    assert sum(c > r for c, r in zip(chosen, rejected)) >= 0.95 * len(val)


def test_all_scenarios_rl_scores_general_rows_with_both_reward_models(compose_train):
    cfg = compose_train("experiment=all_scenarios_rl", "debug=fdr")
    metrics = train(cfg)
    for name in ("accuracy", "format", "helpfulness", "harmlessness"):
        assert f"train/rewards/{name}_mean" in metrics, sorted(metrics)
    assert 0 < metrics["train/rewards/helpfulness_mean"] < 1
    assert {"train/reward_mean_reasoning", "train/reward_mean_general"} <= set(metrics)
