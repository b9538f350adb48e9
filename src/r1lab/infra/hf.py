"""Loading and saving Hugging Face models by local path, the hand-off format between stages.

A stage reads `AutoModelForCausalLM`/`AutoTokenizer` from a directory (a tiny demo model or a user's Qwen/Llama
checkpoint alike) and writes its result the same way. Writes are atomic: the directory under the final name is the
old complete one or the new complete one (`r1lab.infra.atomic.replace_dir`), and loaders refuse a half-written one.
Weights must be readable and finite: a truncated file or a NaN tensor stops `load_model` naming the path (and the
tensor), and `save_pretrained_atomic` refuses to write a non-finite tensor.
"""

import os
import shutil
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from r1lab.infra.atomic import replace_dir
from r1lab.infra.deepspeed import zero3_loading

COMPLETE = ".complete"  # marker written last: a directory without it is a half-written export


class WeightsError(ValueError):
    """Weights that cannot be used: unreadable files, or a tensor holding NaN or infinity; names path and tensor."""


WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER = ("tokenizer.json", "tokenizer.model", "vocab.json")


def first_nonfinite(named_tensors) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity, or None when all are finite.
    A ZeRO-3 parameter is checked through its local shard (`ds_tensor`): each rank checks what it holds.

    >>> first_nonfinite({"a": torch.ones(2), "ids": torch.tensor([1]), "b": torch.tensor([0.0, float("inf")])}.items())
    'b'
    >>> first_nonfinite([("w", torch.zeros(3))]) is None
    True
    """
    for name, tensor in named_tensors:
        tensor = getattr(tensor, "ds_tensor", tensor)
        if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
            return name
    return None


def check_model_dir(path: str | os.PathLike, parts: tuple[str, ...] = ("config", "weights", "tokenizer")) -> Path:
    """Fail fast, before anything heavy loads, if `path` is not a finished HF model directory.

    `parts` says what the caller needs: a config.json, weights (safetensors or bin, single or sharded) and a
    tokenizer. A directory an export left half-written (a `<name>.tmp` sibling without our `.complete` marker in
    `path`, or only the `.tmp`/`.old` of an interrupted replacement) is refused, saying what to do.
    """
    path = Path(path)
    tmp, old = path.parent / f"{path.name}.tmp", path.parent / f"{path.name}.old"
    if not path.is_dir():
        if (tmp / COMPLETE).is_file() or old.is_dir():
            raise FileNotFoundError(
                f"model directory {path} is missing but {tmp if (tmp / COMPLETE).is_file() else old} exists: an export "
                f"was interrupted while replacing it. Rename the complete one to {path.name} (or rerun the stage)")
        raise FileNotFoundError(f"model directory {path} does not exist: point `model.path` at a saved model "
                                "(e.g. the `model/` folder of an earlier stage's run directory)")
    if tmp.exists() and not (path / COMPLETE).exists():
        raise RuntimeError(f"{path} looks half-written (a {path.name}.tmp sibling exists and {path} has no {COMPLETE} "
                           f"marker): rerun the stage that writes it, or delete {tmp} if {path} is a model you trust")
    missing = []
    if "config" in parts and not (path / "config.json").is_file():
        missing.append("config.json")
    if "weights" in parts and not any((path / w).is_file() for w in WEIGHTS):
        missing.append(f"weights (one of {', '.join(WEIGHTS)})")
    if "tokenizer" in parts and not any((path / t).is_file() for t in TOKENIZER):
        missing.append(f"a tokenizer (one of {', '.join(TOKENIZER)})")
    if missing:
        raise FileNotFoundError(f"{path} is not a complete Hugging Face model directory: missing {'; '.join(missing)}. "
                                "Point `model.path` at a directory saved with save_pretrained (model and tokenizer), "
                                "or rerun the stage that writes it")
    return path


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(str(check_model_dir(path, ("tokenizer",))), padding_side="left")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(path: str | os.PathLike, dtype: str = "float32", attn_implementation: str = "sdpa") -> PreTrainedModel:
    """The causal LM at `path`, in training mode (`from_pretrained` returns eval mode). Inside DeepSpeed's
    `zero.Init` (configure_model under ZeRO-3) each rank loads only its shard of every weight. Unreadable weights
    (a truncated or corrupt file) and non-finite ones raise `WeightsError` naming the path (and the tensor)."""
    path = check_model_dir(path, ("config", "weights"))
    try:
        with zero3_loading():
            model = AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype),
                                                         attn_implementation=attn_implementation)
    except Exception as e:  # safetensors, torch.load and transformers raise many types for a damaged file
        raise WeightsError(f"{path}: cannot load the model's weights ({type(e).__name__}: {e}); is a file truncated "
                           "or corrupt? Re-copy or re-export the model") from e
    bad = first_nonfinite([*model.named_parameters(), *model.named_buffers()])  # a ZeRO-3 rank checks its shards
    if bad is not None:
        raise WeightsError(f"{path}: tensor {bad!r} holds NaN or infinite values; refusing to train or sample from "
                           "it. Re-export the model from a good checkpoint")
    return model.train()


def save_pretrained_atomic(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike,
                           state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Save model and tokenizer to `out_dir` through a temporary sibling, marked complete, then put in place.
    `state_dict`: the weights to write instead of the model's own (e.g. consolidated from ZeRO-3 shards)."""
    out_dir = Path(out_dir)
    bad = first_nonfinite((state_dict if state_dict is not None else model.state_dict()).items())
    if bad is not None:
        raise WeightsError(f"refusing to export to {out_dir}: tensor {bad!r} holds NaN or infinite values "
                           "(the previous export, if any, is left as it was)")
    tmp = out_dir.parent / f"{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    (tmp / COMPLETE).touch()
    return replace_dir(tmp, out_dir)  # one atomic swap where the system allows (r1lab.infra.atomic)
