"""Numeric guards: a non-finite loss or gradient skips the optimiser step and is counted; several in a row stop the
run with a message and leave the last checkpoint intact (r1lab.infra.guards, callbacks.nonfinite_guard)."""

import csv
from pathlib import Path

import pytest
import torch

from r1lab.infra.guards import NonFiniteError
from r1lab.stages.grpo import GRPOModule
from r1lab.stages.sft import SFTModule
from r1lab.train import train

CKPT = ["logger=csv", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0",
        "callbacks.model_checkpoint.every_n_train_steps=1", "callbacks.model_checkpoint.save_top_k=-1"]


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def csv_column(run_dir: Path, name: str) -> dict[int, float]:
    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r[name]) for r in csv.DictReader(f) if r.get(name)}


@pytest.mark.parametrize("fault", ["nan_loss", "nan_grad"])
def test_one_nonfinite_step_is_skipped_and_counted(compose_train, tmp_path, monkeypatch, fault):
    bad_step = 2
    loss_fn = SFTModule._loss

    def faulty(self, batch):
        loss, n, terms = loss_fn(self, batch)
        if self.training and self.global_step == bad_step:
            if fault == "nan_loss":
                loss = loss * float("nan")
            else:  # finite loss, NaN gradient everywhere
                loss.register_hook(lambda g: g * float("nan"))
        return loss, n, terms

    monkeypatch.setattr(SFTModule, "_loss", faulty)
    train(compose_train("experiment=cold_start", "data.batch_size=4", "trainer.max_steps=5", *CKPT))
    run, ckpts = tmp_path / "run", tmp_path / "run" / "checkpoints"
    # the bad batch (global step 2 -> 3) left the weights as they were; the steps around it trained
    assert same(weights(ckpts / "step_000002.ckpt"), weights(ckpts / "step_000003.ckpt"))
    assert not same(weights(ckpts / "step_000001.ckpt"), weights(ckpts / "step_000002.ckpt"))
    assert not same(weights(ckpts / "step_000003.ckpt"), weights(ckpts / "step_000004.ckpt"))
    final = weights(ckpts / "last.ckpt")
    assert all(torch.isfinite(t).all() for t in final.values())
    assert torch.load(ckpts / "last.ckpt", weights_only=False)["global_step"] == 5
    assert csv_column(run, "train/skipped_nonfinite") == {0: 0.0, 1: 0.0, 2: 1.0, 3: 1.0, 4: 1.0}
    assert (run / "model" / "config.json").is_file()  # the run finished and exported


def test_nonfinite_steps_in_a_row_stop_the_run_with_an_intact_checkpoint(compose_train, tmp_path, monkeypatch):
    """GRPO (manual optimisation): from step 2 on every loss is NaN; the third skipped step in a row stops the run."""
    loss_of = GRPOModule._micro_batch_loss

    def faulty(self, mb):
        loss, stats = loss_of(self, mb)
        return (loss * float("nan") if self.global_step >= 2 else loss), stats

    monkeypatch.setattr(GRPOModule, "_micro_batch_loss", faulty)
    cfg = compose_train("experiment=r1_zero", "data.batch_size=2", "module.sampling.n=2",
                        "module.sampling.max_new_tokens=8", "trainer.max_steps=8", *CKPT)
    with pytest.raises(NonFiniteError, match=r"(?s)3 optimiser steps in a row.*step 4.*last\.ckpt.*is intact"):
        train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    last = torch.load(ckpts / "last.ckpt", weights_only=False)
    assert last["global_step"] == 4  # steps 2 and 3 were skipped and checkpointed; step 4 raised
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values())
    assert same(last["state_dict"], weights(ckpts / "step_000002.ckpt"))  # what the last good step left
    assert last["callbacks"]["NonFiniteGuard"] == {"skipped": 2, "consecutive": 2}
    assert not (tmp_path / "run" / "model").exists()  # a stopped run exports nothing
