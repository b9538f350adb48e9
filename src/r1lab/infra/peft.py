"""LoRA / PEFT adapters for every stage (`module/peft=lora`), through the `peft` library (Hu et al. 2021).

`apply_peft` wraps a loaded model in a `PeftModel`: the base weights are frozen and only the adapters (and the
`modules_to_save`, e.g. a reward model's new head) train, so the optimizer holds only those. `merged_weights` gives
the weights of base + adapter under the base model's own parameter names (W + scaling * B @ A per adapted layer),
computed as new tensors, the base left untouched bit for bit: what the vLLM engine receives after each GRPO step and
what the export writes, a normal Hugging Face model that loads without `peft`. `save_adapter_atomic` writes the
adapter alone beside it (`<run>/adapter/`).

Simplified: LoRA layers only (`peft.LoraConfig`, no DoRA); not under DeepSpeed ZeRO-3 (partitioned base weights).
"""

import os
import shutil
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from peft.utils import ModulesToSaveWrapper

from r1lab.infra.atomic import replace_dir
from r1lab.infra.deepspeed import is_zero3, zero_init_active

COMPLETE = ".complete"  # as r1lab.infra.hf: the marker written last


def apply_peft(model: torch.nn.Module, config: LoraConfig | None, modules_to_save: tuple[str, ...] = ()):
    """`model` itself when `config` is None (full fine-tuning), else `model` wrapped with fresh adapters, the base
    frozen. `modules_to_save`: modules trained whole beside the adapters (a reward model's `score` head)."""
    if config is None:
        return model
    if not isinstance(config, LoraConfig) or config.use_dora:
        raise ValueError(f"module.peft must be a peft.LoraConfig without DoRA (configs/module/peft/lora.yaml), got "
                         f"{config!r}: merged weights for the rollout engine and the export are computed for LoRA")
    if is_zero3(model) or zero_init_active():
        raise ValueError("module/peft=lora is not supported under DeepSpeed ZeRO-3; use ZeRO-2 or DDP (the adapters' "
                         "optimizer state is small)")
    if modules_to_save:
        config = replace(config, modules_to_save=sorted({*(config.modules_to_save or ()), *modules_to_save}))
    return get_peft_model(model, config)


def is_peft(model: torch.nn.Module) -> bool:
    return isinstance(model, PeftModel)


def merged_delta(weight: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """A LoRA layer's merged weight W + scaling * B @ A ([out, in], [r, in], [out, r]), as a new tensor.

    >>> w, a, b = torch.zeros(2, 3), torch.tensor([[1.0, 0.0, 2.0]]), torch.tensor([[1.0], [3.0]])
    >>> merged_delta(w, a, b, scaling=0.5).tolist()
    [[0.5, 0.0, 1.0], [1.5, 0.0, 3.0]]
    """
    return weight + scaling * (lora_b @ lora_a).to(weight.dtype)


def _lora_weights(name: str, layer: LoraLayer) -> Iterator[tuple[str, torch.Tensor]]:
    """One LoRA-wrapped linear layer's merged weight (and its bias) under the base layer's names."""
    base = layer.get_base_layer()
    if layer.merged:
        raise RuntimeError(f"{name}: adapters are merged into the base weights in place; unmerge them first")
    weight = base.weight.detach()
    for adapter in layer.active_adapters:
        if adapter in layer.lora_A:
            a, b = layer.lora_A[adapter].weight.detach(), layer.lora_B[adapter].weight.detach()
            weight = merged_delta(weight, a.float(), b.float(), layer.scaling[adapter]).to(base.weight.dtype)
    if getattr(layer, "fan_in_fan_out", False):
        raise ValueError(f"{name}: fan_in_fan_out LoRA layers (GPT-2 Conv1D) are not supported")
    yield f"{name}.weight", weight
    if base.bias is not None:
        yield f"{name}.bias", base.bias.detach()


def merged_weights(model: torch.nn.Module) -> list[tuple[str, torch.Tensor]]:
    """(name, tensor) for every parameter of the base model, with the active adapters merged, under the names a plain
    `from_pretrained` model has; `modules_to_save` give their trained copies. The model is not modified."""
    base = model.get_base_model()
    out, handled = [], []
    for name, module in base.named_modules():
        if any(name.startswith(h + ".") for h in handled):
            continue
        if isinstance(module, LoraLayer):
            out += list(_lora_weights(name, module))
            handled.append(name)
        elif isinstance(module, ModulesToSaveWrapper):
            trained = module.modules_to_save[module.active_adapter]
            out += [(f"{name}.{n}", p.detach()) for n, p in trained.named_parameters()]
            handled.append(name)
        else:
            out += [(f"{name}.{n}" if name else n, p.detach()) for n, p in module.named_parameters(recurse=False)]
    return out


def save_adapter_atomic(model: PeftModel, out_dir: str | os.PathLike) -> Path:
    """The adapter alone (`adapter_config.json`, `adapter_model.safetensors`), written through a temporary sibling."""
    out_dir = Path(out_dir)
    tmp = out_dir.parent / f"{out_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    (tmp / COMPLETE).touch()
    return replace_dir(tmp, out_dir)


class AdaptersDisabled:
    """Calls a `PeftModel` with its adapters switched off: the frozen base model, e.g. GRPO's KL reference, with no
    copy of the weights. Not an `nn.Module`, so it adds nothing to the module's parameters or checkpoints."""

    def __init__(self, model: PeftModel):
        self.model = model

    def __call__(self, *args, **kwargs):
        with self.model.disable_adapter():
            return self.model(*args, **kwargs)
