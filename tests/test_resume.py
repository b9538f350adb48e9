"""Exact resume: a run killed with SIGKILL at a random step and resumed from its last checkpoint ends with the same
weights and logs the same per-step metrics as a run that was never interrupted (SFT and GRPO, tiny model, CPU,
deterministic mode)."""

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf, open_dict

from r1lab.train import train

BATCHES = 6
COMMON = ["logger=csv", "trainer.log_every_n_steps=1", "trainer.deterministic=true", "trainer.limit_val_batches=0",
          "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1"]
# (overrides, optimiser steps per batch): Lightning's step counts optimiser steps, GRPO takes mu of them per batch
CASES = {
    "sft": (["experiment=cold_start", "data.batch_size=4"], 1),
    # mu=2 records old log-probs; kl_coef with ref_refresh_steps=2 refreshes the reference model mid-run
    "grpo": (["experiment=r1_zero", "data.batch_size=2", "data.val_limit=2", "data.val_batch_size=2",
              "module.sampling.n=2", "module.sampling.max_new_tokens=8", "module.mu=2", "module.kl_coef=0.1",
              "module.ref_refresh_steps=2"], 2),
}
TIMING = ("per_s",)  # wall-clock throughput metrics differ between any two runs

# The killed run: the real training entry point on a saved config, a little slower per step so that the kill lands
# while it is still training.
KILLED_SCRIPT = """
import sys, time
from omegaconf import OmegaConf
import r1lab.infra.resume as resume
from r1lab.train import train

start = resume.ExactResume.on_train_batch_start
def slow(self, *args):
    time.sleep(0.3)
    start(self, *args)
resume.ExactResume.on_train_batch_start = slow
train(OmegaConf.load(sys.argv[1]))
"""


def configure(compose_train, tmp_path: Path, case: str, name: str, *overrides: str):
    overrides_, per_batch = CASES[case]
    steps = BATCHES * per_batch
    cfg = compose_train(*overrides_, *COMMON, f"trainer.max_steps={steps}", f"trainer.val_check_interval={BATCHES}",
                        *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / name)
        del cfg["hydra"]
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def train_rows(run_dir: Path) -> dict[int, dict]:
    """Per-step training metrics of a run's CSV log, without the timing ones: {step: {name: value}}."""
    with open(run_dir / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    out = {}
    for row in rows:
        train = {k: v for k, v in row.items() if k.startswith(("train/", "lr-")) and v and not any(t in k for t in TIMING)}
        if train:
            out.setdefault(int(row["step"]), {}).update(train)
    return out


def kill_at_random_step(cfg, tmp_path: Path, per_batch: int, sigkill) -> tuple[Path, int]:
    """Run `cfg` in a subprocess and SIGKILL it once the checkpoint of a random step exists."""
    steps = cfg.trainer.max_steps
    step = random.randint(2, BATCHES - 2) * per_batch
    config = tmp_path / "killed.yaml"
    OmegaConf.save(cfg, config)
    ckpt_dir = Path(cfg.callbacks.model_checkpoint.dirpath)
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(config)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=os.environ | {"PYTHONHASHSEED": "0"})
    sigkill(proc, ckpt_dir / f"step_{step:06d}.ckpt", timeout_s=120)
    assert not (ckpt_dir / f"step_{steps:06d}.ckpt").exists(), "killed too late: the run had finished"
    return ckpt_dir / "last.ckpt", step


def state_of(ckpt: Path) -> dict:
    return torch.load(ckpt, map_location="cpu", weights_only=False)  # our own file: hparams hold partials


@pytest.mark.parametrize("case", sorted(CASES))
def test_killed_and_resumed_run_matches_an_uninterrupted_one(compose_train, tmp_path, case, sigkill):
    whole = configure(compose_train, tmp_path, case, "whole")
    train(whole)

    steps = whole.trainer.max_steps
    last, killed_at = kill_at_random_step(configure(compose_train, tmp_path, case, "killed"), tmp_path, CASES[case][1],
                                          sigkill)
    resumed_from = state_of(last)["global_step"]
    assert 1 <= resumed_from < steps
    train(configure(compose_train, tmp_path, case, "resumed", f"ckpt_path={last}"))

    # identical final weights (and optimiser state), every tensor bit for bit
    a, b = state_of(tmp_path / "whole" / "checkpoints" / "last.ckpt"), state_of(tmp_path / "resumed" / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == steps
    assert a["state_dict"].keys() == b["state_dict"].keys()
    if case == "grpo":
        assert any(k.startswith("ref_model.") for k in a["state_dict"])  # the refreshed reference is checkpointed
    differ = [k for k in a["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, f"{case}: killed at step {killed_at}, resumed from {resumed_from}: weights differ in {differ[:5]}"
    for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
        assert all(torch.equal(torch.as_tensor(sa[k]), torch.as_tensor(sb[k])) for k in sa)

    # identical logged metrics for every step the resumed run trained
    whole_rows, resumed_rows = train_rows(tmp_path / "whole"), train_rows(tmp_path / "resumed")
    assert len(whole_rows) == BATCHES and 0 < len(resumed_rows) < BATCHES
    assert sorted(resumed_rows) == sorted(whole_rows)[-len(resumed_rows):], (sorted(whole_rows), sorted(resumed_rows))
    for step, row in resumed_rows.items():
        assert row == whole_rows[step], f"{case}: step {step} differs after resuming from step {resumed_from}"


def batches(loader) -> list[list[int]]:
    return [b.tolist() if torch.is_tensor(b) else list(b) for b in loader]


@pytest.mark.parametrize("kind", ["random_sampler", "bucket_batch_sampler", "mixed_batch_sampler"])
def test_resumable_loader_continues_mid_epoch_and_at_epoch_end(kind):
    from torch.utils.data import RandomSampler

    from data_modules.common import BucketBatchSampler
    from r1lab.infra.resume import ExactResume, ResumableDataLoader, restore_rng

    def make(seed: int) -> ResumableDataLoader:
        torch.manual_seed(seed)  # only the first run's seed matters: a loaded position overrides it
        if kind == "random_sampler":
            return ResumableDataLoader(list(range(20)), batch_size=3, shuffle=True)
        if kind == "mixed_batch_sampler":  # rank 1 of 2: 7 of 14 reasoning rows, 3 of 6 general ones
            from data_modules.rejection import MixedBatchSampler
            return ResumableDataLoader(list(range(20)), batch_sampler=MixedBatchSampler(14, 6, 4, 3.0, seed, 1, 2),
                                       collate_fn=lambda rows: rows)
        data = list(range(20))
        sampler = RandomSampler(data, generator=torch.Generator().manual_seed(seed))
        return ResumableDataLoader(data, batch_sampler=BucketBatchSampler(sampler, 3, lengths=[i % 7 for i in data],
                                                                          chunk_batches=2, seed=seed),
                                   collate_fn=lambda rows: rows)

    whole = make(0)
    epochs = [batches(whole) for _ in range(3)]
    assert epochs[0] != epochs[1]  # a new order every epoch
    if kind == "random_sampler":   # the same batches as a plain DataLoader (the demo's orders are unchanged)
        from torch.utils.data import DataLoader
        torch.manual_seed(0)
        plain = DataLoader(list(range(20)), batch_size=3, shuffle=True)
        assert [batches(plain) for _ in range(3)] == epochs

    run = make(0)
    it = iter(run)
    for _ in range(2):
        next(it)
    run.consumed = 2  # what ExactResume records once two training steps have run
    state, rng = run.state_dict(), ExactResume().state_dict()
    resumed = make(1)
    resumed.load_state_dict(state)
    it = iter(resumed)
    first = next(it)
    restore_rng(rng, [resumed])  # as ExactResume does before the first step (Lightning has prefetched a batch)
    assert [first.tolist() if torch.is_tensor(first) else first, *batches(it)] == epochs[0][2:]  # nothing repeated or lost
    assert batches(resumed) == epochs[1]                   # and the next epochs as if never interrupted

    run = make(0)
    batches(run)
    run.consumed = len(run)                                # saved at the end of the epoch
    state, rng = run.state_dict(), ExactResume().state_dict()
    resumed = make(2)
    resumed.load_state_dict(state)
    it = iter(resumed)
    first = next(it)
    restore_rng(rng, [resumed])
    assert [first.tolist() if torch.is_tensor(first) else first, *batches(it)] == epochs[1]
    assert batches(resumed) == epochs[2]
