"""DeepSpeed ZeRO support: config checks, ZeRO-3 loading, gathering parameters, and consolidated HF exports.

`trainer=deepspeed_zero2|deepspeed_zero3|deepspeed_zero3_offload` (configs/trainer/) run Lightning's DeepSpeedStrategy
on GPUs. Under ZeRO-3 each rank holds a shard of every parameter, so the code that needs whole weights goes through here:

- `check_deepspeed_config(ds_config, trainer_cfg)`: fail fast, before anything loads, when the DeepSpeed config and the
  Lightning trainer disagree (batch sizes, precision, clipping); `train()` calls `check_config(cfg)` for every run.
- `zero3_loading()`: `r1lab.infra.hf.load_model` inside Lightning's `deepspeed.zero.Init` (the strategy wraps
  `configure_model()` in one) tells transformers, which then loads the checkpoint shard by shard into partitioned
  parameters.
- `gathered_for_generation(model, engine)`: `model.generate` with whole parameters (one all-gather per rollout, not
  one per layer per token), a no-op without ZeRO-3. `gathered(model)` for reads (vLLM weight sync).
- `full_state_dict(model)`: the consolidated state dict on rank 0 (collective: every rank calls it), used by the
  end-of-stage HF export. `python -m r1lab.convert` turns a saved ZeRO checkpoint into a `save_pretrained` directory.
Without DeepSpeed installed, or without ZeRO-3 partitioning, every helper is a no-op.
"""

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext

import torch

DEEPSPEED_STRATEGY = "lightning.pytorch.strategies.DeepSpeedStrategy"


# ---- config checks ----------------------------------------------------------------------------------------------
def _get(cfg, key, default=None):
    return cfg.get(key, default) if isinstance(cfg, Mapping) or hasattr(cfg, "get") else getattr(cfg, key, default)


def world_size_of(trainer_cfg) -> int | None:
    """devices x num_nodes when both are numbers (None for "auto" or a device list)."""
    devices, nodes = _get(trainer_cfg, "devices", 1), _get(trainer_cfg, "num_nodes", 1)
    if not isinstance(devices, (int, str)) and hasattr(devices, "__len__"):  # a list of device ids
        devices = len(devices)
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return devices * nodes if isinstance(devices, int) and isinstance(nodes, int) and devices > 0 else None


def check_deepspeed_config(ds_config: Mapping, trainer_cfg, world_size: int | None = None,
                           max_grad_norm: float | None = None) -> None:
    """Raise ValueError when the DeepSpeed config `ds_config` (what DeepSpeedStrategy(config=...) gets) disagrees
    with the Lightning trainer config `trainer_cfg`.

    world_size: processes in the job (default: trainer devices x num_nodes when those are numbers).
    max_grad_norm: the module's own clipping norm when it optimises manually (GRPO): under DeepSpeed
    `clip_gradients` is a no-op, so DeepSpeed's `gradient_clipping` is the only clipping and must equal it.

    >>> trainer = {"precision": "bf16-mixed", "gradient_clip_val": 1.0, "accumulate_grad_batches": 2, "devices": 4}
    >>> ds = {"train_micro_batch_size_per_gpu": 8, "train_batch_size": 64, "bf16": {"enabled": True},
    ...       "gradient_clipping": 1.0, "zero_optimization": {"stage": 3}}
    >>> check_deepspeed_config(ds, trainer)
    >>> check_deepspeed_config({**ds, "train_batch_size": 32}, trainer)
    Traceback (most recent call last):
    ...
    ValueError: DeepSpeed train_batch_size=32 != train_micro_batch_size_per_gpu 8 x trainer.accumulate_grad_batches 2 x world size 4 = 64
    """
    errors = []
    if "gradient_accumulation_steps" in ds_config:
        errors.append("do not set gradient_accumulation_steps in the DeepSpeed config: Lightning sets it from "
                      "trainer.accumulate_grad_batches (and refuses a config that has it)")
    for key in ("optimizer", "scheduler"):
        if key in ds_config:
            errors.append(f"the DeepSpeed config sets `{key}`: it would replace the module's configure_optimizers; "
                          "configure it under `module.optimizer` / `module.scheduler` instead")
    micro = ds_config.get("train_micro_batch_size_per_gpu")
    if micro is not None and (not isinstance(micro, int) or micro < 1):
        errors.append(f"train_micro_batch_size_per_gpu must be a positive integer, got {micro!r}")
    accumulate = _get(trainer_cfg, "accumulate_grad_batches", 1) or 1
    world_size = world_size or world_size_of(trainer_cfg)
    total = ds_config.get("train_batch_size")
    if total is not None:
        if micro is None:
            errors.append("train_batch_size is set but train_micro_batch_size_per_gpu is not: set the micro batch "
                          "(the data module's batch size) instead")
        elif world_size is not None and total != micro * accumulate * world_size:
            errors.append(f"DeepSpeed train_batch_size={total} != train_micro_batch_size_per_gpu {micro} x "
                          f"trainer.accumulate_grad_batches {accumulate} x world size {world_size} = "
                          f"{micro * accumulate * world_size}")

    precision = str(_get(trainer_cfg, "precision", "32-true"))
    bf16 = bool((ds_config.get("bf16") or {}).get("enabled", False))
    fp16 = bool((ds_config.get("fp16") or {}).get("enabled", False))
    if bf16 and fp16:
        errors.append("bf16 and fp16 are both enabled in the DeepSpeed config")
    if bf16 != precision.startswith("bf16"):
        errors.append(f"DeepSpeed bf16.enabled={bf16} but trainer.precision={precision}: "
                      "use precision bf16-mixed with bf16 enabled, or neither")
    if fp16 != (precision in ("16-mixed", "16-true", "16")):
        errors.append(f"DeepSpeed fp16.enabled={fp16} but trainer.precision={precision}")

    if str(_get(trainer_cfg, "gradient_clip_algorithm", "norm") or "norm") == "value":
        errors.append("DeepSpeed clips by norm only: trainer.gradient_clip_algorithm must be norm")
    expected = max_grad_norm if max_grad_norm is not None else (_get(trainer_cfg, "gradient_clip_val") or 0.0)
    clipping = ds_config.get("gradient_clipping", expected)  # absent: Lightning fills in trainer.gradient_clip_val
    if clipping is None:
        errors.append("gradient_clipping is null: set a norm, or 0.0 for no clipping")
    elif float(clipping) != float(expected):
        source = "module.max_grad_norm" if max_grad_norm is not None else "trainer.gradient_clip_val"
        errors.append(f"DeepSpeed gradient_clipping={clipping} but {source}={expected}: DeepSpeed does the clipping, "
                      "so they must agree")

    zero = ds_config.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        errors.append(f"zero_optimization.stage must be 0-3, got {stage!r}")
    if (zero.get("offload_param") or {}).get("device", "none") != "none" and stage != 3:
        errors.append(f"offload_param needs ZeRO stage 3 (got stage {stage})")
    if (zero.get("offload_optimizer") or {}).get("device", "none") != "none" and stage not in (1, 2, 3):
        errors.append(f"offload_optimizer needs ZeRO stage 1-3 (got stage {stage})")
    if errors:
        raise ValueError("; ".join(errors))


def deepspeed_config_of(cfg) -> dict | None:
    """The resolved DeepSpeed config dict of a composed train config whose trainer uses DeepSpeedStrategy, else None."""
    from omegaconf import OmegaConf

    strategy = cfg.trainer.get("strategy") if "trainer" in cfg else None
    if not hasattr(strategy, "get") or strategy.get("_target_") != DEEPSPEED_STRATEGY:
        return None
    config = strategy.get("config")
    return OmegaConf.to_container(config, resolve=True) if config is not None else {}


def check_config(cfg) -> None:
    """`check_deepspeed_config` for a composed train config (a no-op unless the trainer uses DeepSpeed)."""
    ds_config = deepspeed_config_of(cfg)
    if ds_config is None:
        return
    module = cfg.get("module") or {}
    manual = "max_grad_norm" in module  # GRPO optimises manually and clips with module.max_grad_norm
    check_deepspeed_config(ds_config, cfg.trainer, max_grad_norm=(module.max_grad_norm or 0.0) if manual else None)


# ---- ZeRO-3 -----------------------------------------------------------------------------------------------------
def is_zero3(model: torch.nn.Module) -> bool:
    """Whether `model`'s parameters are ZeRO-3 partitioned (DeepSpeed gives each a `ds_id`)."""
    return any(hasattr(p, "ds_id") for p in model.parameters())


def zero_init_active() -> bool:
    """Whether a `deepspeed.zero.Init` context is open (without importing DeepSpeed when nothing has)."""
    partition = sys.modules.get("deepspeed.runtime.zero.partition_parameters")
    return partition is not None and getattr(partition, "zero_init_context", 0) > 0


class _ZeRO3ForTransformers:
    """What transformers asks of its DeepSpeed config object (`is_zero3()`, `config`); HfDeepSpeedConfig would need
    `accelerate`. The config is only read to build transformers' own nested `zero.Init`, which defers to the open one."""

    def __init__(self, config: dict):
        self.config = config

    def is_zero3(self) -> bool:
        return True


@contextmanager
def zero3_loading(config: dict | None = None) -> Iterator[None]:
    """Inside an open `deepspeed.zero.Init`, make transformers' `from_pretrained` ZeRO-3 aware for the duration: it
    then loads each weight into its partitioned parameter (gathered, filled on rank 0, re-partitioned) instead of
    copying into the empty shards. A no-op outside one, or when transformers already knows (an HfDeepSpeedConfig)."""
    if not zero_init_active():
        yield
        return
    from transformers.integrations import deepspeed as hf_ds

    if hf_ds.is_deepspeed_zero3_enabled():
        yield
        return
    import deepspeed

    world = deepspeed.comm.get_world_size() if deepspeed.comm.is_initialized() else 1
    holder = _ZeRO3ForTransformers(config or {"zero_optimization": {"stage": 3}, "train_micro_batch_size_per_gpu": 1,
                                              "gradient_accumulation_steps": 1, "train_batch_size": world})
    hf_ds.set_hf_deepspeed_config(holder)
    try:
        yield
    finally:
        hf_ds.unset_hf_deepspeed_config()


def gathered(model: torch.nn.Module, modifier_rank: int | None = None):
    """A context in which `model`'s ZeRO-3 parameters are whole on every rank (collective: all ranks enter it);
    with `modifier_rank`, that rank's in-place changes are kept. `nullcontext()` when not partitioned."""
    if not is_zero3(model):
        return nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=modifier_rank)


def _parameter_offload(engine):
    optimizer = getattr(engine, "optimizer", None)
    return getattr(optimizer, "parameter_offload", None) or (optimizer if hasattr(optimizer, "forward_hooks") else None)


@contextmanager
def gathered_for_generation(model: torch.nn.Module, engine=None, enabled: bool = True) -> Iterator[torch.nn.Module]:
    """Generate with whole parameters under ZeRO-3; a no-op otherwise.

    All ranks gather `model` once (every rank must enter: it is collective), then each rank generates on its own
    (any number of tokens: no `synced_gpus` lock-step, no per-layer all-gather per token). The engine's ZeRO-3
    fetch/release hooks are taken off meanwhile, or the first forward would re-partition the gathered weights
    (as TRL's `unwrap_model_for_generation` does). Costs the whole model's memory on each rank during generation.
    """
    if not enabled or not is_zero3(model):
        yield model
        return
    offload = _parameter_offload(engine) if engine is not None else None
    with gathered(model):
        if offload is None:
            yield model
            return
        for p in offload.module.parameters():
            p.ds_active_sub_modules.clear()
        for hook in [*offload.forward_hooks, *offload.backward_hooks]:
            hook.remove()
        offload.forward_hooks, offload.backward_hooks = [], []
        try:
            yield model
        finally:
            offload._register_deepspeed_module(offload.module)


def deepspeed_engine(module) -> object | None:
    """The DeepSpeed engine a LightningModule trains under, or None."""
    trainer = getattr(module, "_trainer", None)
    strategy = getattr(trainer, "strategy", None) if trainer is not None else None
    return getattr(strategy, "deepspeed_engine", None) if strategy is not None else None


def start_micro_batch(engine, last: bool) -> None:
    """Call before each micro-batch's forward when one optimiser step backs up several micro-batches by hand (GRPO).

    DeepSpeed expects each micro-batch to go through `engine(...)` with `gradient_accumulation_steps` of them per
    step; otherwise ZeRO takes every backward as the step's only one and keeps the last micro-batch's gradient
    (measured on ZeRO-2 and ZeRO-3). This marks the boundary (True on the last one) and does what `engine.forward`
    does first. A no-op without an engine."""
    if engine is None:
        return
    engine.set_gradient_accumulation_boundary(last)
    if hasattr(engine.optimizer, "clear_backward_seen_flag"):
        engine.optimizer.clear_backward_seen_flag()


@torch.no_grad()
def copy_weights(src: torch.nn.Module, dst: torch.nn.Module) -> None:
    """dst <- src parameter by parameter (e.g. refreshing GRPO's reference model); ZeRO-3 aware (collective)."""
    if not (is_zero3(src) or is_zero3(dst)):
        dst.load_state_dict(src.state_dict())
        return
    with gathered(src), gathered(dst, modifier_rank=0):
        for (name, s), (_, d) in zip(src.named_parameters(), dst.named_parameters(), strict=True):
            d.data.copy_(s.data)


@torch.no_grad()
def full_state_dict(model: torch.nn.Module, rank: int | None = None) -> dict[str, torch.Tensor] | None:
    """`model.state_dict()` with whole tensors on CPU. Under ZeRO-3 it gathers one module at a time (collective:
    every rank must call it) and returns the dict on rank 0 and None elsewhere; otherwise it is the plain state dict
    (None on ranks other than 0 when `rank` is given)."""
    if not is_zero3(model):
        return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if not rank else None
    import deepspeed

    rank = deepspeed.comm.get_rank() if rank is None else rank
    state: dict[str, torch.Tensor] = {}
    copies: dict[int, torch.Tensor] = {}  # tied parameters stay tied
    for prefix, module in model.named_modules():
        params = list(module.named_parameters(recurse=False))
        with deepspeed.zero.GatheredParameters([p for _, p in params], modifier_rank=None):
            if rank == 0:
                for name, p in params:
                    key = id(p)
                    copies.setdefault(key, p.detach().cpu().clone())
                    state[f"{prefix}.{name}" if prefix else name] = copies[key]
        if rank == 0:
            for name, buf in module.named_buffers(recurse=False):
                if name not in module._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = buf.detach().cpu().clone()
    return state if rank == 0 else None
