"""Rejection sampling, R1's stage 3: `python -m r1lab.sample model_dir=<stage-2 model> [k=4] [m=1]` (`r1lab-sample`).

Samples k responses per prompt with the configured rollout engine (configs/rollout), rejects those a filter catches
(configs/sample.yaml `filters`, run in order; a sample is counted under the first filter that rejects it), keeps up
to m of the rest (`keep`: first, shortest or random; the others are counted as `over_cap`) and writes them as chat
SFT rows {id, kind, task, prompt, response, answer, numbers}, the schema of the world's cold_start files.

The output directory holds, per `shard_size` prompts, `shard-00000.jsonl` (or .parquet; none when no sample was
kept) and then `shard-00000.counts.json`, each written to a temporary file and renamed; a shard is complete once its
counts file exists. `settings.json` is written first, `manifest.json` (settings, shards, counts) and `summary.md`
last. A rerun skips the complete shards (a rerun with other settings or prompts is refused); shard i samples with
seed `seed + i`, so a run killed and rerun writes the same files, byte for byte, as one never interrupted.
Simplified: one process; every prompt row is read (and checked) up front; no wall-clock data in the outputs.
"""

import hashlib
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from r1lab.data.io import COLUMNS, DataError, read_rows, select_rows, spread
from r1lab.data.prompt_rows import drop_long_prompts, prompt_row_problem
from r1lab.infra.atomic import remove_stale_tmp, write_atomic  # manifests, counts and shards: whole or absent
from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.infra.progress import Progress, hydra_run_file
from r1lab.infra.utils import entry_point
from r1lab.maths.filters import KEEP, Filter, screen
from r1lab.rollout.engine import RolloutEngine, SamplingConfig


def jsonl_bytes(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


WRITERS = {"jsonl": jsonl_bytes, "parquet": parquet_bytes}


def json_bytes(value) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode()


def sample_rows(row: dict, index: int, texts: list[str], filters: dict[str, Filter], m: int, keep: str,
                seed: int) -> tuple[list[dict], Counter]:
    """The SFT rows kept from one prompt's samples and the counts of what happened to each sample."""
    accepted, counts = screen(texts, row, filters)
    chosen = [accepted[i] for i in KEEP[keep]([texts[i] for i in accepted], m, random.Random(f"{seed}/{index}"))]
    counts.update(samples=len(texts), accepted=len(chosen), over_cap=len(accepted) - len(chosen))
    source_id = row.get("id", f"row{index}")
    out = [{"id": f"rs-{source_id}-{j}", "kind": row.get("kind", "reasoning"), "task": row.get("task"),
            "prompt": row["prompt"], "response": texts[j], "answer": row["answer"], "numbers": row.get("numbers", [])}
           for j in chosen]
    return out, counts


def sample_shard(rows: list[dict], start: int, engine: RolloutEngine, render: Callable[[str], str],
                 sampling: SamplingConfig, filters: dict[str, Filter], m: int, keep: str,
                 done: Callable[[int], None] | None = None) -> tuple[list[dict], Counter]:
    """Generate `sampling.n` samples for each row of one shard (rows[0] is prompt number `start`), filter and keep;
    `done(k)` hears how many of the shard's prompts are sampled."""
    groups = engine.generate([render(row["prompt"]) for row in rows], sampling, done)  # [len(rows)][k]
    kept, counts = [], Counter()
    for i, (row, group) in enumerate(zip(rows, groups, strict=True)):
        out, c = sample_rows(row, start + i, [s.text for s in group], filters, m, keep, sampling.seed)
        kept += out
        counts += c
    return kept, counts


def summary_table(counts: dict[str, int]) -> str:
    """Markdown: each outcome with its number of samples and its share of all samples.

    >>> print(summary_table({"samples": 4, "accepted": 1, "wrong_answer": 3}))
    | outcome | samples | share |
    |---|---|---|
    | accepted | 1 | 0.250 |
    | wrong_answer | 3 | 0.750 |
    """
    total = max(counts["samples"], 1)
    lines = ["| outcome | samples | share |", "|---|---|---|"]
    lines += [f"| {name} | {n} | {n / total:.3f} |" for name, n in counts.items() if name != "samples"]
    return "\n".join(lines)


def read_prompts(cfg: DictConfig) -> list[dict]:
    """Every prompt row, read and checked before the model loads: a bad row fails with file:line:field (or, with
    `data.on_error=skip`, is dropped and counted); prompts over `data.max_prompt_length` tokens are dropped and counted."""
    files = OmegaConf.to_object(cfg.data.files) if OmegaConf.is_config(cfg.data.files) else cfg.data.files
    rename = OmegaConf.to_object(cfg.data.rename) if cfg.data.get("rename") else None
    skipped: list[str] = []
    rows = read_rows(files, COLUMNS, rename=rename, split=cfg.data.split, nonempty=("prompt",),
                     on_error=cfg.data.get("on_error", "raise"), skipped=skipped, row_check=prompt_row_problem,
                     row_format=hydra.utils.instantiate(cfg.data.row_format) if cfg.data.get("row_format") else None)
    rows = spread(select_rows(rows, cfg.data.get("where")), cfg.limit, cfg.seed)
    rows = [row | {"answer": str(row["answer"])} for row in rows]
    max_tokens = cfg.data.get("max_prompt_length")
    rows, too_long = drop_long_prompts(rows, load_tokenizer(cfg.model_dir) if max_tokens else None, max_tokens)
    if skipped or too_long:
        print(f"prompts: dropped {len(skipped)} bad rows (data.on_error=skip) and {too_long} longer than {max_tokens} "
              f"tokens; {len(rows)} left")
    if not rows:
        raise DataError(f"{files}: no prompts left ({len(skipped)} bad rows, {too_long} too long)")
    return rows


def start_or_resume(out_dir: Path, settings: dict) -> None:
    """Record the settings of a new run; refuse to resume a directory written with other settings; remove the
    temporary files a killed run left."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "settings.json"
    if path.exists() and json.loads(path.read_text()) != settings:
        raise ValueError(f"{out_dir} holds a sampling run with other settings ({path}); resuming would mix two "
                         "datasets: use the same settings or another output_dir")
    for tmp in out_dir.glob(".*.tmp"):
        tmp.unlink()
    write_atomic(path, json_bytes(settings))


def write_shards(rows: list[dict], out_dir: Path, fmt: str, shard_size: int, totals: Counter,
                 sample: Callable[[list[dict], int, int], tuple[list[dict], Counter]],
                 progress: Progress | None = None) -> list[dict]:
    """Each shard of `shard_size` prompts: kept as is when its counts file exists, else `sample(part, start, index)`
    and written (rows, then counts). Adds the shards' counts to `totals`; returns the shard list of the manifest.
    `progress` counts the prompts done, from the first shard this run samples (so its rate is this run's)."""
    shards, begin, new_prompts = [], time.perf_counter(), 0
    bar = tqdm(total=len(rows), unit="prompt", desc="sampling")
    for index, start in enumerate(range(0, len(rows), shard_size)):
        name, part = f"shard-{index:05d}", rows[start:start + shard_size]
        counts_path = out_dir / f"{name}.counts.json"
        if not counts_path.exists():
            if progress:
                progress.update(start)
            kept, counts = sample(part, start, index)
            if kept:
                write_atomic(out_dir / f"{name}.{fmt}", WRITERS[fmt](kept))
            write_atomic(counts_path, json_bytes({"prompts": len(part), "rows": len(kept), "counts": dict(counts)}))
            new_prompts += len(part)
            if progress:
                progress.update(start + len(part))
        shard = json.loads(counts_path.read_text())
        totals.update(shard["counts"])
        shards.append({"file": f"{name}.{fmt}" if shard["rows"] else None, "prompts": shard["prompts"],
                       "rows": shard["rows"]})
        bar.update(len(part))
        bar.set_postfix(prompts_s=f"{new_prompts / (time.perf_counter() - begin):.2f}",
                        accept=f"{totals['accepted'] / max(totals['samples'], 1):.3f}")
    bar.close()
    if progress:
        progress.update(len(rows), final=True)
    return shards


def run(cfg: DictConfig, rollout_factory: Callable[..., RolloutEngine] | None = None) -> dict:
    """Config -> prompts -> shards -> manifest.json and summary.md; returns the manifest."""
    rows = read_prompts(cfg)
    if cfg.keep not in KEEP or cfg.format not in WRITERS:
        raise ValueError(f"keep must be one of {sorted(KEEP)} and format one of {sorted(WRITERS)}")
    sampling = replace(hydra.utils.instantiate(cfg.sampling), n=cfg.k)
    settings = {"source_model": str(cfg.model_dir), "data": OmegaConf.to_object(cfg.data), "prompts": len(rows),
                "prompts_sha256": hashlib.sha256(jsonl_bytes(rows)).hexdigest(), "seed": cfg.seed, "k": cfg.k,
                "m": cfg.m, "keep": cfg.keep, "shard_size": cfg.shard_size, "format": cfg.format,
                "sampling": asdict(sampling), "filters": OmegaConf.to_object(cfg.filters)}
    out_dir = Path(cfg.output_dir)
    remove_stale_tmp(out_dir)  # what a killed run left half-written
    start_or_resume(out_dir, settings)
    filters = {name: hydra.utils.instantiate(spec) for name, spec in cfg.filters.items()}
    tokenizer, template = load_tokenizer(cfg.model_dir), hydra.utils.instantiate(cfg.template)
    engine = (rollout_factory or hydra.utils.instantiate(cfg.rollout))(
        model=load_model(cfg.model_dir, cfg.dtype).eval(), tokenizer=tokenizer)

    progress = Progress(cfg.task_name, len(rows), hydra_run_file(), unit="prompt", echo=False)  # tqdm shows it

    def sample(part: list[dict], start: int, index: int) -> tuple[list[dict], Counter]:
        return sample_shard(part, start, engine, lambda p: template.render(p, tokenizer=tokenizer),
                            replace(sampling, seed=sampling.seed + index), filters, cfg.m, cfg.keep,
                            done=lambda k: progress.update(start + k))

    totals = Counter(dict.fromkeys(["samples", "accepted", *filters, "over_cap"], 0))
    shards = write_shards(rows, out_dir, cfg.format, cfg.shard_size, totals, sample, progress)
    manifest = settings | {"rows": sum(s["rows"] for s in shards), "counts": dict(totals), "shards": shards}
    write_atomic(out_dir / "summary.md", (summary_table(manifest["counts"]) + "\n").encode())
    write_atomic(out_dir / "manifest.json", json_bytes(manifest))
    print(summary_table(manifest["counts"]))
    print(f"{manifest['rows']} rows from {len(rows)} prompts in {out_dir}")
    return manifest


@entry_point("sample.yaml")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
