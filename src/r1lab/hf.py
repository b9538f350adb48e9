"""Loading and saving Hugging Face models by local path, the hand-off format between stages.

A stage reads `AutoModelForCausalLM`/`AutoTokenizer` from a directory (a tiny demo model or a user's Qwen/Llama
checkpoint alike) and writes its result the same way. Writes are atomic: a directory is complete or absent.
"""

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

COMPLETE = ".complete"  # marker written last: a directory without it is a half-written export


def check_model_dir(path: str | os.PathLike) -> Path:
    """Fail fast, before anything heavy loads, if `path` is not a finished HF model directory."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {path} does not exist: point `model.path` at a saved model "
                                "(e.g. the `model/` folder of an earlier stage's run directory)")
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"{path} has no config.json: it is not a Hugging Face model directory")
    if (path.parent / f"{path.name}.tmp").exists() and not (path / COMPLETE).exists():
        raise RuntimeError(f"{path} looks half-written (a {path.name}.tmp sibling exists): rerun the stage that writes it")
    return path


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(check_model_dir(path)), padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | os.PathLike, dtype: str = "float32", attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The causal LM at `path`, in training mode (`from_pretrained` returns eval mode)."""
    model = AutoModelForCausalLM.from_pretrained(
        str(check_model_dir(path)), dtype=getattr(torch, dtype), attn_implementation=attn_implementation
    )
    return model.train()


def save_pretrained_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike) -> Path:
    """Save model and tokenizer to `out_dir` through a temporary sibling and one rename."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f"{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE).touch()
    if out_dir.exists():
        old = out_dir.parent / f"{out_dir.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        out_dir.rename(old)
        tmp.rename(out_dir)
        shutil.rmtree(old)
    else:
        tmp.rename(out_dir)
    return out_dir
