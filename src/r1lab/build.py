"""Build the demo's inputs: the synthetic world, a tokenizer trained on it, and random-init tiny Llama models.

Run: `python -m r1lab.build` (installed as `r1lab-build`); e.g. `r1lab-build model_sizes=[tiny] overwrite=true`.
Writes `${paths.world_dir}` (see r1lab.demo.world; its `preferences/` folder, r1lab.demo.preferences) and
`${paths.models_dir}/<size>` (model + tokenizer, a full HF directory), plus `${paths.models_dir}/tokenizer` so every
size shares one vocabulary. Existing outputs are kept unless `overwrite=true`; a stage whose input was rebuilt is
rebuilt too. A world built with other settings is an error.
"""

import json
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from r1lab.demo.models import SIZES, build_model, build_tokenizer, count_parameters
from r1lab.demo.preferences import write_preferences
from r1lab.demo.world import DEFAULT_SIZES, write_world
from r1lab.infra import hf
from r1lab.infra.utils import entry_point

log = logging.getLogger(__name__)
TOKENIZER_TEXTS = {"pretrain/train.jsonl": ("text",), "cold_start/train.jsonl": ("prompt", "response"),
                   "general_sft/train.jsonl": ("prompt", "response")}


def world_texts(world_dir: Path) -> Iterator[str]:
    """The training text of the world (pretraining documents and SFT prompts and responses), never held-out rows."""
    for name, fields in TOKENIZER_TEXTS.items():
        with open(world_dir / name, encoding="utf-8") as f:
            for line in f:
                row = json.loads(line)
                yield from (row[field] for field in fields)


def ensure_world(world_dir: Path, seed: int, world_sizes: dict | None, world_options: dict | None,
                 overwrite: bool) -> bool:
    """Write the world unless a matching one exists; True if it was (re)written."""
    manifest_path = world_dir / "manifest.json"
    if overwrite or not manifest_path.is_file():
        write_world(world_dir, seed, world_sizes, **(world_options or {}))
        return True
    manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    wanted = {"seed": seed, "sizes": {**DEFAULT_SIZES, **(world_sizes or {})}, **(world_options or {})}
    differ = sorted(key for key, value in wanted.items() if manifest.get(key) != value)
    if differ:
        raise ValueError(f"{manifest_path}: the world there was built with other {differ} "
                         f"({ {k: manifest.get(k) for k in differ} }); pass overwrite=true to rebuild it")
    return False


def ensure_preferences(world_dir: Path, seed: int, rebuild: bool) -> bool:
    """Write the world's preference data (stage 4) when the world was rebuilt or it is missing; True if written.

    It only reads the world's general rows: a world built before preference data existed gains it, byte for byte
    unchanged otherwise, and the tokenizer never sees it.
    """
    manifest = world_dir / "preferences" / "manifest.json"
    if rebuild or not manifest.is_file() or json.loads(manifest.read_text(encoding="utf-8"))["seed"] != seed:
        write_preferences(world_dir, seed)
        return True
    return False


def ensure_tokenizer(world_dir: Path, tok_dir: Path, vocab_size: int,
                     rebuild: bool) -> tuple[PreTrainedTokenizerBase, bool]:
    """The shared tokenizer, trained on the world's text when missing or `rebuild`; (tokenizer, was_built)."""
    record = tok_dir / "build.json"  # its settings (a small corpus can give fewer than vocab_size tokens)
    if not rebuild and record.is_file():
        built_with = json.loads(record.read_text(encoding="utf-8"))
        if built_with != {"vocab_size": vocab_size}:
            raise ValueError(f"{record}: the tokenizer there was built with {built_with}, not vocab_size={vocab_size}; "
                             "pass overwrite=true to rebuild it")
        return AutoTokenizer.from_pretrained(str(tok_dir)), False
    tokenizer = build_tokenizer(world_texts(world_dir), vocab_size)
    tmp = tok_dir.parent / f"{tok_dir.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tokenizer.save_pretrained(tmp)
    (tmp / record.name).write_text(json.dumps({"vocab_size": vocab_size}) + "\n", encoding="utf-8")
    shutil.rmtree(tok_dir, ignore_errors=True)
    tmp.rename(tok_dir)
    return tokenizer, True


def built_at(model_dir: Path, size: str) -> bool:
    """Whether the model in `model_dir` has the shape SIZES[size] names (False: the size changed since; rebuild it)."""
    config = json.loads((model_dir / "config.json").read_text())
    return all(config.get(key) == value for key, value in SIZES[size].items())


def build_all(world_dir: str | Path, models_dir: str | Path, seed: int = 0,
              sizes: list[str] = ("tiny", "student", "demo"), world_sizes: dict | None = None, vocab_size: int = 2048,
              overwrite: bool = False, world_options: dict | None = None) -> dict:
    """Write the world, the tokenizer and one random-init model per size; returns what was built with its numbers."""
    world_dir, models_dir = Path(world_dir), Path(models_dir)
    summary: dict = {"world_dir": str(world_dir), "models": {}}
    summary["world_built"] = rebuild = ensure_world(world_dir, seed, world_sizes, world_options, overwrite)
    summary["preferences_built"] = ensure_preferences(world_dir, seed, rebuild)
    tokenizer, rebuild = ensure_tokenizer(world_dir, models_dir / "tokenizer", vocab_size, rebuild or overwrite)
    summary["tokenizer_built"], summary["vocab_size"] = rebuild, len(tokenizer)
    for size in sizes:
        out = models_dir / size
        if rebuild or overwrite or not (out / hf.COMPLETE).is_file() or not built_at(out, size):
            model = build_model(tokenizer, size, seed)
            hf.save_pretrained_atomic(model, tokenizer, out)
            summary["models"][size] = {"path": str(out), "parameters": count_parameters(model), "built": True}
        else:
            summary["models"][size] = {"path": str(out), "built": False}
    return summary


@entry_point("build.yaml")
def main(cfg: DictConfig) -> None:
    summary = build_all(
        cfg.paths.world_dir, cfg.paths.models_dir, seed=cfg.seed, sizes=list(cfg.model_sizes),
        world_sizes=OmegaConf.to_container(cfg.world.sizes), vocab_size=cfg.vocab_size, overwrite=cfg.overwrite,
        world_options=OmegaConf.to_container(cfg.world.options),
    )
    log.info("build: %s", json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
