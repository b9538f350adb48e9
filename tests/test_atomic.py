"""Atomic artifacts: a writer killed or failing halfway leaves the old complete file (or directory) under the final
name and nothing partial; loaders refuse a half-written model directory and say what is missing."""

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1lab.infra import atomic
from r1lab.infra.atomic import replace_dir, write_atomic
from r1lab.infra.callbacks import AtomicCheckpointIO
from r1lab.infra.hf import COMPLETE, check_model_dir, load_model, load_tokenizer, save_pretrained_atomic


class Killed(BaseException):
    """Stands in for the process dying in the middle of a write."""


def test_write_interrupted_halfway_keeps_the_old_file(tmp_path):
    path = write_atomic(tmp_path / "manifest.json", b'{"old": true}\n')

    def half(f):
        f.write(b'{"new": tr')
        raise Killed

    with pytest.raises(Killed):
        write_atomic(path, half)
    assert path.read_bytes() == b'{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]  # no temporary file left visible either


def test_checkpoint_write_interrupted_halfway_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"global_step": 1, "w": torch.ones(1000)}, path)

    def half_save(obj, f):
        f.write(b"PK\x03\x04 partial zip")
        raise Killed

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(Killed):
        io.save_checkpoint({"global_step": 2, "w": torch.zeros(1000)}, path)
    monkeypatch.undo()
    loaded = io.load_checkpoint(path)
    assert loaded["global_step"] == 1 and torch.equal(loaded["w"], torch.ones(1000))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


WRITER = """
import sys, torch
from r1lab.infra.callbacks import AtomicCheckpointIO
io, i = AtomicCheckpointIO(), 0
while True:
    i += 1
    io.save_checkpoint({"step": i, "w": torch.full((2_000_000,), float(i))}, sys.argv[1])
"""


def test_sigkill_while_checkpoints_are_written_leaves_a_loadable_one(tmp_path, sigkill):
    """SIGKILL a process that keeps rewriting a 8 MB checkpoint, at a random moment: what is under the final name
    always loads, whole."""
    path = tmp_path / "last.ckpt"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stderr=subprocess.PIPE)
    sigkill(proc, path, timeout_s=60, delay_s=random.uniform(0.0, 0.5))
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["step"] >= 1 and torch.equal(ckpt["w"], torch.full((2_000_000,), float(ckpt["step"])))


@pytest.fixture
def model_dir(tokenizer_dir, tmp_path) -> Path:
    """A copy of the tiny model's export (config, weights, tokenizer, completion marker)."""
    return Path(shutil.copytree(tokenizer_dir, tmp_path / "stage" / "model"))


def test_export_interrupted_halfway_keeps_the_old_model(model_dir, monkeypatch):
    model, tokenizer = load_model(model_dir), load_tokenizer(model_dir)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        next(model.parameters()).add_(1.0)

    def crash(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(type(tokenizer), "save_pretrained", crash)  # weights written, tokenizer not: dies halfway
    with pytest.raises(Killed):
        save_pretrained_atomic(model, tokenizer, model_dir)
    monkeypatch.undo()
    assert (model_dir.parent / "model.tmp").is_dir()   # the partial export is only under the temporary name
    reloaded = load_model(model_dir).state_dict()       # the old one is complete (its .complete marker) and loads
    assert all(torch.equal(reloaded[k], before[k]) for k in before)
    save_pretrained_atomic(model, tokenizer, model_dir)  # the next export replaces it and cleans up
    assert not torch.equal(load_model(model_dir).state_dict()[next(iter(before))], next(iter(before.values())))
    assert sorted(p.name for p in model_dir.parent.iterdir()) == ["model"]


def test_replace_dir_without_renameat2_and_a_kill_between_its_renames(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    for version in ("old", "new"):
        tmp = tmp_path / "model.tmp"
        tmp.mkdir()
        (tmp / "v").write_text(version)
        replace_dir(tmp, tmp_path / "model")
    assert (tmp_path / "model" / "v").read_text() == "new" and not (tmp_path / "model.old").exists()
    # a kill after `model` -> `model.old` and before `model.tmp` -> `model`: the loader says what happened
    (tmp_path / "model").rename(tmp_path / "model.old")
    with pytest.raises(FileNotFoundError, match=r"model is missing but .*model\.old exists: an export was interrupted"):
        check_model_dir(tmp_path / "model")


def test_replace_dir_swaps_atomically_where_the_system_can(tmp_path):
    final = tmp_path / "model"
    for version in ("old", "new"):
        tmp = tmp_path / "model.tmp"
        tmp.mkdir()
        (tmp / "v").write_text(version)
        replace_dir(tmp, final)
    assert (final / "v").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("remove, message", [
    (["model.safetensors"], r"missing weights \(one of model\.safetensors"),
    (["tokenizer.json"], r"missing a tokenizer \(one of tokenizer\.json"),
    (["config.json", "model.safetensors"], r"missing config\.json; weights"),
])
def test_an_incomplete_model_dir_is_refused_saying_what_is_missing(model_dir, remove, message):
    for name in remove:
        (model_dir / name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"is not a complete Hugging Face model directory: {message}"):
        check_model_dir(model_dir)


def test_a_model_dir_beside_a_leftover_temporary_export_is_refused(model_dir):
    (model_dir / COMPLETE).unlink()          # e.g. a user's directory, or one from before the marker existed
    (model_dir.parent / "model.tmp").mkdir()
    with pytest.raises(RuntimeError, match=r"looks half-written \(a model\.tmp sibling exists .*rerun the stage"):
        check_model_dir(model_dir)
    with pytest.raises(RuntimeError, match="half-written"):
        load_model(model_dir)
