"""DDP on 2 CPU processes (gloo). GRPO: each step's prompts are split across ranks with none lost or repeated, and
each prompt's whole group of G completions is sampled and scored on the rank that owns it. The mixed-batch modules
(experiment=rejection_sft, all_scenarios_rl): each rank trains on disjoint rows at the configured ratio per batch."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
from hydra.utils import instantiate

TESTS = Path(__file__).parent


class TokenLedger(L.Callback):
    """PromptLedger for token batches (SFT rows carry no id): a fingerprint of each row's tokens, with the epoch."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        parts = batch if isinstance(batch, list) else [batch]   # rejection SFT pads its two kinds apart
        rows = [ids[mask.bool()].tolist() for part in parts
                for ids, mask in zip(part["input_ids"], part["attention_mask"])]
        record = {"epoch": trainer.current_epoch, "step": trainer.global_step, "rank": trainer.global_rank,
                  "ids": [fingerprint(r) for r in rows]}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / f"rows.rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def fingerprint(input_ids: list[int]) -> str:
    return hashlib.sha1(json.dumps(input_ids).encode()).hexdigest()[:16]


def run_ddp(artifacts_dir: Path, tmp_path: Path, *overrides: str) -> None:
    """`python -m r1lab.train` on 2 CPU processes with the tiny model (tests/ on the path for TokenLedger)."""
    common = ["model=tiny", f"model.path={artifacts_dir}/models/tiny", f"paths.artifacts_dir={artifacts_dir}",
              f"paths.world_dir={artifacts_dir}/world", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run",
              "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.limit_val_batches=0",
              "logger=csv", "optimized_metric=null", "callbacks.model_checkpoint=null"]
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "r1lab.train", *common, *overrides], capture_output=True, text=True,
                          timeout=600, env=env, check=False)
    assert done.returncode == 0, done.stderr[-3000:]


def ledger_records(path_pattern: str) -> dict[tuple[int, int], dict[int, list]]:
    """{(epoch, step): {rank: ids}} from both ranks' ledger files."""
    out: dict[tuple[int, int], dict[int, list]] = {}
    for rank in (0, 1):
        for line in Path(path_pattern.format(rank=rank)).read_text().splitlines():
            r = json.loads(line)
            out.setdefault((r.get("epoch", 0), r["step"]), {})[r["rank"]] = r["ids"]
    return out


def test_ddp_splits_prompts_without_loss_or_repeats(artifacts_dir, tmp_path):
    ledger = tmp_path / "ledger"
    overrides = ["experiment=r1_zero", "model=tiny", f"model.path={artifacts_dir}/models/tiny",
                 f"paths.world_dir={artifacts_dir}/world", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run",
                 "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3",
                 "trainer.limit_val_batches=0", "logger=csv", "data.batch_size=4", "module.sampling.n=2",
                 "module.sampling.max_new_tokens=8", "optimized_metric=null", "callbacks.model_checkpoint=null",
                 "+callbacks.ledger._target_=r1lab.infra.callbacks.PromptLedger", f"+callbacks.ledger.out_dir={ledger}"]
    done = subprocess.run([sys.executable, "-m", "r1lab.train", *overrides], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for rank in (0, 1) for line in open(ledger / f"prompts.rank{rank}.jsonl")]
    by_step: dict[int, dict[int, list]] = {}
    for r in records:
        by_step.setdefault(r["step"], {})[r["rank"]] = r["ids"]
    assert sorted(by_step) == [0, 1, 2]
    seen = []
    for ranks in by_step.values():
        assert sorted(ranks) == [0, 1] and all(len(ids) == 4 for ids in ranks.values())
        assert not set(ranks[0]) & set(ranks[1])            # no prompt on both ranks in a step
        seen += ranks[0] + ranks[1]
    assert len(seen) == len(set(seen)) == 24                 # 3 steps x 2 ranks x 4 prompts, none twice
    assert (tmp_path / "run" / "model" / "config.json").is_file()


def test_ddp_rejection_sft_ranks_get_disjoint_rows_at_the_ratio(compose_train, artifacts_dir, tmp_path):
    """12 rejection-sampled rows, batches of 4 at 3:1, 2 ranks: 2 batches per rank and epoch, each 3 reasoning rows +
    1 general; within an epoch no row on both ranks, and the ranks together pass over every sample exactly once."""
    data = instantiate(compose_train("experiment=rejection_sft").data)
    data.setup("fit")
    reasoning = {fingerprint(e["input_ids"]) for e in data.examples["train"]}
    general = {fingerprint(e["input_ids"]) for e in data.examples["general"]}
    assert len(reasoning) == 12 and not reasoning & general
    ledger = tmp_path / "ledger"
    run_ddp(artifacts_dir, tmp_path, "experiment=rejection_sft", "data.batch_size=4", "trainer.max_epochs=2",
            "+callbacks.ledger._target_=test_grpo_ddp.TokenLedger", f"+callbacks.ledger.out_dir={ledger}")
    records = ledger_records(str(ledger / "rows.rank{rank}.jsonl"))
    assert sorted(records) == [(0, 0), (0, 1), (1, 2), (1, 3)]
    for epoch in (0, 1):
        on = {rank: [i for (e, _), ranks in records.items() if e == epoch for i in ranks[rank]] for rank in (0, 1)}
        assert not set(on[0]) & set(on[1])                                  # no row on both ranks in an epoch
        assert sorted(i for ids in on.values() for i in ids if i in reasoning) == sorted(reasoning)
    for ranks in records.values():
        assert sorted(ranks) == [0, 1]
        for ids in ranks.values():                                          # the ratio in every batch
            assert [i in reasoning for i in ids].count(True) == 3 and [i in general for i in ids].count(True) == 1


def test_ddp_all_scenarios_rl_ranks_get_disjoint_prompts_at_the_ratio(reward_model_dirs, artifacts_dir, tmp_path):
    """Batches of 4 prompts at 3:1 on 2 ranks for 3 steps (within the first epoch): 3 reasoning + 1 general prompt per
    rank and step, and no prompt twice."""
    ledger = tmp_path / "ledger"
    run_ddp(artifacts_dir, tmp_path, "experiment=all_scenarios_rl", "data.batch_size=4", "trainer.max_steps=3",
            "module.sampling.n=2", "module.sampling.max_new_tokens=8",
            "+callbacks.ledger._target_=r1lab.infra.callbacks.PromptLedger", f"+callbacks.ledger.out_dir={ledger}")
    records = ledger_records(str(ledger / "prompts.rank{rank}.jsonl"))
    assert sorted(records) == [(0, 0), (0, 1), (0, 2)]
    seen = []
    for ranks in records.values():
        assert sorted(ranks) == [0, 1]
        for ids in ranks.values():                           # where={task: [arithmetic]} selects the reasoning rows
            assert [i.startswith("arithmetic-") for i in ids] == [True, True, True, False]
            seen += ids
    assert len(seen) == len(set(seen)) == 24                 # 3 steps x 2 ranks x 4 prompts, none twice
