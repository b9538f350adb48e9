"""Config mistakes caught before anything loads: `check_config(cfg)` is the first thing r1lab.train.train() does.

    check_config(cfg)   # ConfigError listing every problem found, each with the setting to change

Generic over stages, like the entry point: it looks at keys by name wherever they are, never at which stage runs.
- Model directories: `model.path` and every key named `model_path`, `teacher_path` or `tokenizer_path` (a reward
  model under module.rewards included) must be a finished Hugging Face directory (r1lab.infra.hf.check_model_dir). A key
  that interpolates another (`tokenizer_path: ${model.path}`) is reported as the key to set.
- Sizes: batch sizes, samples per prompt (`n` of a SamplingConfig node), micro-batch size, lengths and accumulation
  must be positive integers; a GRPO group (`module.sampling.n`) needs two completions at least; mixing by `ratio`
  needs two rows per batch at least.
- A module that clips its own gradients (`max_grad_norm`, i.e. manual optimisation) cannot take Lightning's
  gradient clipping or accumulation (`trainer.gradient_clip_val`, `trainer.accumulate_grad_batches`).
- Master weights: training keeps its weights in `model.dtype` (the module's `dtype`). AdamW's steps at a fine-tuning lr
  (1e-6) are below bf16's resolution for most weights, so a bf16/fp16 model under any strategy but DeepSpeed (which
  keeps fp32 copies itself) barely learns: refused, as is `trainer.precision=bf16-true|16-true` (weights cast down).
  `model.dtype=float32` with `trainer.precision=bf16-mixed` computes in bf16 on fp32 master weights.
Simplified: only what the config says is checked; data files are checked when the data module reads them.
"""

import re
from collections.abc import Iterator
from typing import Any

from omegaconf import DictConfig, ListConfig

from r1lab.infra.deepspeed import check_config as check_deepspeed
from r1lab.infra.hf import check_model_dir

MODEL_DIR_KEYS = ("model_path", "teacher_path", "tokenizer_path")
MODEL_PARTS = ("config", "weights", "tokenizer")  # what r1lab.infra.hf.check_model_dir can require of a directory
POSITIVE_INT_KEYS = ("batch_size", "val_batch_size", "micro_batch_size", "mu", "max_length", "max_new_tokens",
                     "block_size", "accumulate_grad_batches")
SAMPLING = "r1lab.rollout.engine.SamplingConfig"  # its `n` (samples per prompt) is checked as a size too
GROUP_SIZE = "module.sampling.n"                  # GRPO's G
HALF_DTYPES = ("bfloat16", "float16", "half", "bf16", "fp16")
HALF_TRUE_PRECISIONS = ("bf16-true", "16-true")  # Lightning casts the module's weights to these
_REFERENCE = re.compile(r"^\$\{([\w.]+)\}$")  # `${model.path}`: a plain reference to another key


class ConfigError(ValueError):
    """A config that cannot run; the message names each key to change."""


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, DictConfig, str]]:
    """(dotted key, parent node, key) for every key under `node`, the `hydra` group excluded."""
    if isinstance(node, DictConfig):
        for key in node:
            if prefix == "" and key == "hydra":
                continue
            path = f"{prefix}{key}"
            yield path, node, key
            child = node._get_node(key)
            if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing() and not child._is_none():
                yield from _walk(child, path + ".")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            child = node._get_node(i)
            if isinstance(child, (DictConfig, ListConfig)):
                yield from _walk(child, f"{prefix}{i}.")


def _value(parent: DictConfig, key: str) -> Any:
    """The resolved value, or None when it is missing (`???`) or does not resolve outside Hydra's runtime."""
    try:
        return parent[key]
    except Exception:  # MissingMandatoryValue, InterpolationResolutionError, ...
        return None


def _source(parent: DictConfig, key: str, path: str) -> str:
    """The key a user sets to change `path`: the one it references (`${model.path}`), else `path` itself."""
    raw = parent._get_node(key)._value()
    match = _REFERENCE.match(raw) if isinstance(raw, str) else None
    return match.group(1) if match else path


def model_dir_problems(cfg: DictConfig) -> list[str]:
    """One line per model directory that is missing or unfinished, naming the key(s) to set."""
    keys: dict[str, list[str]] = {}    # directory -> keys to set that point at it
    parts: dict[str, set[str]] = {}    # directory -> what its users need of it (a tokenizer path: the tokenizer only)
    for path, parent, key in _walk(cfg):
        if key in MODEL_DIR_KEYS or path == "model.path":
            value = _value(parent, key)
            if isinstance(value, str) and value:
                source = _source(parent, key, path)
                keys.setdefault(value, [])
                if source not in keys[value]:
                    keys[value].append(source)
                parts.setdefault(value, set()).update(("tokenizer",) if key == "tokenizer_path" else MODEL_PARTS)
    problems = []
    for directory, sources in keys.items():
        try:
            check_model_dir(directory, tuple(p for p in MODEL_PARTS if p in parts[directory]))
        except (FileNotFoundError, RuntimeError) as e:
            names = " and ".join(sources)
            problems.append(f"{names}={directory}: {e}. Set {sources[0]}=<a Hugging Face model directory> (the "
                            f"`model/` folder of an earlier stage's run, or `r1lab-build` for the demo's models)")
    return problems


def size_problems(cfg: DictConfig) -> list[str]:
    """Sizes that cannot work, each with the key and what it must be."""
    problems = []
    for path, parent, key in _walk(cfg):
        if key not in POSITIVE_INT_KEYS and not (key == "n" and parent.get("_target_") == SAMPLING):
            continue
        value = _value(parent, key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            problems.append(f"{path}={value!r}: must be a positive integer")
        elif path == GROUP_SIZE and value < 2:
            problems.append(f"{path}={value}: a group of one completion has no relative advantage (every advantage "
                            f"is 0, nothing is learnt); set {path} to 2 or more (R1-Zero: 16)")
    for path, parent, key in _walk(cfg):
        if key == "ratio" and isinstance(parent.get("batch_size"), int) and 0 < parent.batch_size < 2:
            prefix = path.removesuffix("ratio")
            problems.append(f"{prefix}batch_size={parent.batch_size}: mixing by {path} needs 2 rows per batch at "
                            f"least (one of each kind); raise {prefix}batch_size")
    return problems


def optimisation_problems(cfg: DictConfig) -> list[str]:
    """Lightning's automatic clipping and accumulation asked of a module that optimises manually."""
    module, trainer = cfg.get("module"), cfg.get("trainer")
    if not isinstance(module, DictConfig) or not isinstance(trainer, DictConfig) or "max_grad_norm" not in module:
        return []
    problems = []
    clip = _value(trainer, "gradient_clip_val") if "gradient_clip_val" in trainer else None
    if clip:
        problems.append(f"trainer.gradient_clip_val={clip}: this module optimises manually and clips its own gradients "
                        f"(module.max_grad_norm); set trainer.gradient_clip_val=null and use module.max_grad_norm")
    accumulate = _value(trainer, "accumulate_grad_batches") if "accumulate_grad_batches" in trainer else None
    if isinstance(accumulate, int) and accumulate > 1:
        problems.append(f"trainer.accumulate_grad_batches={accumulate}: this module optimises manually (one rollout "
                        f"batch per step); set trainer.accumulate_grad_batches=1 and raise data.batch_size or "
                        f"{GROUP_SIZE} for a bigger step")
    return problems


def _strategy_name(trainer: DictConfig) -> str:
    """The trainer's strategy as text: a name (`ddp`, `auto`) or a strategy class path (`..DeepSpeedStrategy`)."""
    strategy = _value(trainer, "strategy") if "strategy" in trainer else "auto"
    if isinstance(strategy, DictConfig):
        return str(strategy.get("_target_", ""))
    return str(strategy)


def precision_problems(cfg: DictConfig) -> list[str]:
    """Half-precision master weights under a strategy that keeps no fp32 copy (all but DeepSpeed), naming what to set.

    >>> from omegaconf import OmegaConf
    >>> cfg = OmegaConf.create({"model": {"dtype": "bfloat16"}, "module": {"dtype": "${model.dtype}"},
    ...                         "trainer": {"strategy": "ddp", "precision": "bf16-mixed"}})
    >>> print(precision_problems(cfg)[0].split(" under")[0])
    model.dtype=bfloat16: the optimiser would step on bf16/fp16 weights
    >>> cfg.trainer.strategy = {"_target_": "lightning.pytorch.strategies.DeepSpeedStrategy"}
    >>> precision_problems(cfg)
    []
    """
    module, trainer = cfg.get("module"), cfg.get("trainer")
    if not isinstance(module, DictConfig) or not isinstance(trainer, DictConfig):
        return []
    strategy = _strategy_name(trainer)
    if "deepspeed" in strategy.lower():
        return []
    fix = ("set model.dtype=float32 (fp32 master weights; trainer.precision=bf16-mixed still computes in bf16) or "
           "use a trainer=deepspeed_* (DeepSpeed keeps fp32 master weights itself)")
    problems = []
    dtype = _value(module, "dtype") if "dtype" in module else None
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in HALF_DTYPES:
        problems.append(f"{_source(module, 'dtype', 'module.dtype')}={dtype}: the optimiser would step on bf16/fp16 "
                        f"weights under strategy {strategy!r}, and updates at a fine-tuning lr round away; {fix}")
    precision = _value(trainer, "precision") if "precision" in trainer else None
    if str(precision) in HALF_TRUE_PRECISIONS:
        problems.append(f"trainer.precision={precision}: casts the weights themselves to half precision under "
                        f"strategy {strategy!r}, and updates at a fine-tuning lr round away; set "
                        f"trainer.precision=bf16-mixed (fp32 weights, bf16 compute) or use a trainer=deepspeed_*")
    return problems


def check_config(cfg: DictConfig) -> None:
    """Raise ConfigError listing every mistake found (model directories, sizes, optimisation settings, master
    weights), then check a DeepSpeed strategy's config against the trainer (`r1lab.infra.deepspeed.check_config`)."""
    problems = model_dir_problems(cfg) + size_problems(cfg) + optimisation_problems(cfg) + precision_problems(cfg)
    if problems:
        raise ConfigError("the config cannot run; change these settings:\n  - " + "\n  - ".join(problems))
    check_deepspeed(cfg)

