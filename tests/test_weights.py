"""Damaged weights never train and never leave: a truncated or NaN model directory is refused before the first step,
naming the path (and the tensor); an export refuses non-finite tensors and keeps the previous export; the next run
removes the temporary files a killed run left behind."""

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1lab.infra.hf import WeightsError, load_model, load_tokenizer, save_pretrained_atomic
from r1lab.train import train


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def poison(model_dir: Path, name: str, value: float) -> None:
    weights = load_file(model_dir / "model.safetensors")
    weights[name].view(-1)[0] = value
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})


def test_a_truncated_weights_file_is_refused_naming_the_path(tokenizer_dir, tmp_path):
    bad = copy_model(tokenizer_dir, tmp_path / "truncated")
    weights = bad / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    with pytest.raises(WeightsError, match=rf"{bad}: cannot load the model's weights \(SafetensorError"):
        load_model(bad)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_stop_sft_before_its_first_step(compose_train, tokenizer_dir, tmp_path, value):
    bad = copy_model(tokenizer_dir, tmp_path / "poisoned")
    poison(bad, "model.layers.0.mlp.up_proj.weight", value)
    cfg = compose_train("experiment=cold_start", f"model.path={bad}", "logger=csv", "trainer.max_steps=2")
    with pytest.raises(WeightsError, match=rf"{bad}: tensor 'model.layers.0.mlp.up_proj.weight' holds NaN"):
        train(cfg)
    assert not (tmp_path / "run" / "model").exists()          # nothing exported
    assert not list((tmp_path / "run").rglob("*.ckpt"))        # nothing trained


def test_an_export_refuses_non_finite_tensors_and_keeps_the_previous_one(tokenizer_dir, tmp_path):
    model, tokenizer = load_model(tokenizer_dir), load_tokenizer(tokenizer_dir)
    out = save_pretrained_atomic(model, tokenizer, tmp_path / "model")
    before = (out / "model.safetensors").read_bytes()
    with torch.no_grad():
        model.model.norm.weight[3] = float("nan")
    with pytest.raises(WeightsError, match=r"refusing to export .*'model.norm.weight' holds NaN"):
        save_pretrained_atomic(model, tokenizer, out)
    assert (out / "model.safetensors").read_bytes() == before
    assert not (tmp_path / "model.tmp").exists()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["model.norm.weight"][3] = 1.0
    with pytest.raises(WeightsError, match=r"'lm_head.weight' holds NaN"):   # a given state dict is checked too
        save_pretrained_atomic(model, tokenizer, out, state_dict=state | {"lm_head.weight": state["lm_head.weight"] / 0 * 0})


def test_the_next_run_removes_what_a_killed_run_left(compose_train, tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / ".last.ckpt.tmp.31337").write_bytes(b"")   # AtomicCheckpointIO's, killed mid-write
    (run / "model.tmp").mkdir()                                         # save_pretrained_atomic's, killed mid-export
    (run / "model.tmp" / "config.json").write_text("{}")
    cfg = compose_train("experiment=cold_start", "logger=csv", "trainer.max_steps=1", "trainer.limit_val_batches=0")
    train(cfg)
    assert not (run / "checkpoints" / ".last.ckpt.tmp.31337").exists()
    assert not (run / "model.tmp").exists()
    assert (run / "model" / "config.json").is_file()
