"""Rewards on what real datasets hold: GSM8K and MATH solutions as gold answers, plain-text golds, and golds that
cannot be judged (None: counted, named once in the log, their groups left out of the advantages); and the README's
own-reward example, composed as the README says."""

import logging
import re
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from r1lab.infra.utils import ROOT
from r1lab.maths import rewards
from r1lab.maths.formats import answer_key
from r1lab.maths.rewards import (
    accuracy_reward,
    check_answer,
    check_failures,
    judge_answer,
    weighted_rewards,
)
from r1lab.maths.rl import group_advantages, seq_mean_token_mean
from r1lab.rollout.engine import Completion
from r1lab.stages.grpo import GRPOModule


def r1(answer: str) -> str:
    return f" Let me think. </think> <answer> {answer} </answer>"


# ---- answer keys and plain-text golds --------------------------------------------------------------------------------
GSM8K = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 clips.\n#### 1,072"
MATH = "We have $\\frac{6}{4} = \\boxed{\\frac{3}{2}}$, and the sum is $\\boxed{\\dfrac{3}{2}}$."


@pytest.mark.parametrize("gold, key", [(GSM8K, "1072"), (MATH, "\\dfrac{3}{2}"), ("#### -7 ", "-7"),
                                       ("x = \\boxed{\\{1, 2\\}}", "\\{1, 2\\}"), ("Paris", "Paris")])
def test_answer_key(gold, key):
    assert answer_key(gold) == key


def test_accuracy_reads_answer_keys_and_plain_text():
    cases = [  # (pred, gold, expected): GSM8K and MATH solutions as golds; plain-text golds compared as text
        ("1072", GSM8K, 1.0), ("1,072", GSM8K, 1.0), ("72", GSM8K, 0.0),
        ("1.5", MATH, 1.0), ("\\frac{6}{4}", MATH, 1.0), ("2", MATH, 0.0),
        ("Paris", "Paris", 1.0), ("paris.", "Paris", 1.0), ("\\text{Paris}", "Paris", 1.0), ("Lyon", "Paris", 0.0),
        ("new york", "New York", 1.0), ("Monday", "The day is \\boxed{\\text{Monday}}.", 1.0),
        ("Tuesday", "\\boxed{\\text{Monday}}", 0.0), ("Paris", "#### Paris", 1.0),
    ]
    pred, gold, expected = zip(*cases)
    assert accuracy_reward([r1(p) for p in pred], answer=list(gold)) == list(expected)


def test_the_exact_answer_scores_one():
    golds = ["Paris", "Jean-Paul Sartre", "\\text{Monday}", "x^2 + 1", "\\frac{1}{2}", "[1, 2)", "\\infty",
             "3, 15, 42", "2\\sqrt{3}", "\\{1, 2\\}", "x = 3", "10\\%", "-0.25", "\\pi/4"]
    assert accuracy_reward([r1(g) for g in golds], answer=golds) == [1.0] * len(golds)


# ---- golds that cannot be judged -------------------------------------------------------------------------------------
@pytest.mark.parametrize("gold", ["", "  ", "#### ", "\\boxed{}", "\\sqrt{", "\\frac{1}{", "{", None,
                                  "Solution: ... #### \\frac{", "9" * 2000])
def test_an_unjudgeable_gold_gives_none_and_is_counted(gold, monkeypatch):
    monkeypatch.setattr(rewards, "_UNJUDGED", set())
    before = check_failures()
    out = accuracy_reward([r1("5"), r1("Paris"), " no answer at all"], answer=[gold] * 3)
    assert out == [None, None, None]
    assert check_failures() == before + 3                          # one error per completion judged
    assert check_answer("5", gold) is False and judge_answer(None, gold) is None


def test_an_unjudgeable_gold_is_named_once_in_the_log(caplog, monkeypatch):
    monkeypatch.setattr(rewards, "_UNJUDGED", set())
    with caplog.at_level(logging.WARNING, logger="r1lab.maths.rewards"):
        accuracy_reward([r1("1")] * 4, answer=["\\sqrt{", "\\sqrt{", "#### ", "\\sqrt{"])
        accuracy_reward([r1("1")] * 2, answer=["\\sqrt{", "4"])
    named = [r.getMessage() for r in caplog.records if r.name == "r1lab.maths.rewards"]
    assert len(named) == 2, named
    assert "'\\\\sqrt{'" in named[0] and "'#### '" in named[1] and "cannot be judged" in named[0]


def test_demo_tasks_keep_their_rules():
    """The demo world's exact checkers still decide its tasks; an empty gold cannot be judged there either."""
    assert accuracy_reward([r1("olleh"), r1("OLLEH")], answer=["olleh"] * 2, task=["reverse"] * 2) == [1.0, 0.0]
    assert accuracy_reward([r1("58.0")], answer=["58"], task=["arithmetic"]) == [0.0]
    assert accuracy_reward([r1("1")], answer=[""], task=["arithmetic"]) == [None]


def test_none_is_error_voids_the_row_and_plain_none_does_not():
    texts = [r1("5"), r1("5")]
    acc = {"fn": accuracy_reward}
    assert weighted_rewards({"acc": acc | {"none_is_error": True}}, texts, {"answer": ["5", "#### "]})[0] == [1.0, None]
    assert weighted_rewards({"acc": acc}, texts, {"answer": ["5", "#### "]})[0] == [1.0, 0.0]   # "does not apply"
    acc_reasoning = acc | {"none_is_error": True, "kinds": ["reasoning"]}                      # rows not scored: fine
    cols = {"answer": ["5", "#### "], "kind": ["reasoning", "general"]}
    assert weighted_rewards({"acc": acc_reasoning}, texts, cols)[0] == [1.0, 0.0]


def test_grpo_leaves_unjudged_groups_out_of_the_update():
    """Rewards [NaN, NaN | 1, 0 | 1, 1] in groups of 2: the unjudged group is not trained even when zero-variance
    groups are kept, and every advantage is finite."""
    hparams = SimpleNamespace(sampling=SimpleNamespace(n=2), mask_truncated=False, advantages=group_advantages,
                              correction=None, max_staleness=0, loss_weights=seq_mean_token_mean, micro_batch_size=64,
                              drop_zero_variance=False)
    module = SimpleNamespace(hparams=hparams, tokenizer=SimpleNamespace(pad_token_id=0), device="cpu")
    completions = [Completion("x", [5 + i], True) for i in range(6)]
    rewards_ = torch.tensor([float("nan"), float("nan"), 1.0, 0.0, 1.0, 1.0])
    rollout, _ = GRPOModule._pack(module, [[1]] * 6, completions, rewards_, torch.ones(6))
    assert sorted(rollout.input_ids[:, -1].tolist()) == [7, 8, 9, 10]
    assert torch.isfinite(rollout.advantages).all()
    hparams.drop_zero_variance = True
    rollout, _ = GRPOModule._pack(module, [[1]] * 6, completions, rewards_, torch.ones(6))
    assert sorted(rollout.input_ids[:, -1].tolist()) == [7, 8]


# ---- the README's own reward -----------------------------------------------------------------------------------------
def readme_example() -> tuple[str, str]:
    """The Python and the `+module.rewards...` override of the README's "Rewards, and your own" section."""
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("### Rewards, and your own", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)[1]
    override = re.search(r"'(\+module\.rewards\.[^']*)'", section)[1]
    return code, override


def test_readme_reward_example(compose_train, tmp_path, monkeypatch):
    code, override = readme_example()
    assert len(code.strip().splitlines()) == 5
    (tmp_path / "my_rewards.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    cfg = compose_train("experiment=r1_zero", override)
    specs = instantiate(cfg.module.rewards)
    assert list(specs) == ["accuracy", "format", "brevity"] and specs["accuracy"]["none_is_error"]
    texts = [r1("5"), r1("5" * 500), r1("5")]
    total, raw = weighted_rewards(specs, texts, {"answer": ["5", "5", ""], "task": ["arithmetic"] * 3})
    assert raw["brevity"] == [1.0, 0.0, None]
    assert total == [2.2, 1.0, None]                                     # the third gold cannot be judged


def test_grpo_trains_through_unjudged_golds_and_a_custom_reward(compose_train, tmp_path, monkeypatch, caplog):
    """Every gold of a GRPO step unreadable: the step runs, each completion is a reward error, every group is
    left out, each gold is named once; the README's reward is scored alongside."""
    from r1lab.train import train

    code, override = readme_example()
    (tmp_path / "my_rewards.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(rewards, "_UNJUDGED", set())
    monkeypatch.setattr(rewards, "answer_key", lambda gold: f"\\sqrt{{{gold}")   # every gold unreadable maths
    monkeypatch.delitem(rewards.CHECKERS, "arithmetic")                           # so it goes to math-verify
    with caplog.at_level(logging.WARNING, logger="r1lab.maths.rewards"):
        metrics = train(compose_train("experiment=r1_zero", "debug=fdr", "data.batch_size=2", "module.sampling.n=2",
                                      "module.sampling.max_new_tokens=4", "logger=none", "callbacks=none", override))
    assert metrics["train/reward_errors"] == 4.0 and metrics["train/unjudged_frac"] == 1.0
    assert 0.0 <= metrics["train/rewards/brevity_mean"] <= 1.0
    named = [r.getMessage() for r in caplog.records if r.name == "r1lab.maths.rewards"]
    golds = [re.search(r"gold answer '(.*?)' cannot", m)[1] for m in named]
    assert golds and len(golds) == len(set(golds))                      # train and validation golds, once each
