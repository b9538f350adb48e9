"""Evaluate a saved model on checkable prompts: `python -m r1lab.eval model_dir=<dir> [template=chat] [k=4]`.

Samples k completions per prompt (R1's evaluation: T=0.6, top-p 0.95) with the configured rollout engine and reports
pass@1, cons@k, format compliance, language mixing, truncation and length, overall and pass@1 per task. Writes
metrics.json, metrics.md and samples.jsonl to the run directory. The `template` group decides how prompts are rendered
(R1-Zero text or chat template), where the answer is read from and which format reward applies.
With `judges` configured (`eval_set=all_scenarios`), rows of kind `general` (general questions, vault-code requests)
are judged instead (r1lab.maths.judges: helpfulness, unsafe, leak, format_general) and the metrics above cover the other
rows only; `where` and `limit` select the checked rows, `limit_general` the judged ones.
Simplified: one process; the whole evaluation set is generated in one `generate` call (batched inside the engine).
"""

import json
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from r1lab.data.io import COLUMNS, read_rows, select_rows, spread
from r1lab.infra.atomic import write_atomic
from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.infra.progress import Progress, hydra_run_file
from r1lab.infra.report import metrics_table
from r1lab.infra.utils import entry_point
from r1lab.maths.formats import Template
from r1lab.maths.judges import judge_groups, split_kinds
from r1lab.maths.metrics import EvalMetrics, score_group
from r1lab.maths.rewards import CHECK_FAILURES
from r1lab.rollout.engine import RolloutEngine, SamplingConfig


def check_rows(rows: list[dict]) -> None:
    """Fail before generating if a countdown row cannot be checked (it needs its list of numbers)."""
    for i, row in enumerate(rows):
        if row.get("task") == "countdown" and not isinstance(row.get("numbers"), list):
            raise ValueError(f"row {i} (id {row.get('id')!r}): task 'countdown' needs a 'numbers' list, "
                             f"got {type(row.get('numbers')).__name__}")


def evaluate(model_dir: str, rows: list[dict], template: Template, rollout_factory: Callable[..., RolloutEngine],
             sampling: SamplingConfig, k: int, dtype: str = "float32", language: str = "en",
             n_samples: int = 8, judges: dict[str, Callable] | None = None, progress: Progress | None = None) -> dict:
    """Generate k completions per row and score them: checked rows by their answers, and with `judges` (name ->
    `judge(completions, **columns)`, see r1lab.maths.judges) the rows of kind `general` by the judges.

    rollout_factory(model=, tokenizer=) -> engine (e.g. a partial of HFRollout). Returns {"metrics": name -> value,
    "speed": generation timing, "samples": the completions of the first `n_samples` prompts of each kind}.
    `progress` reports the prompts generated as the engine finishes them.
    """
    check_rows(rows)
    checked, judged = split_kinds(rows, bool(judges))
    tokenizer = load_tokenizer(model_dir)
    engine = rollout_factory(model=load_model(model_dir, dtype).eval(), tokenizer=tokenizer)
    prompts = [template.render(row["prompt"], tokenizer=tokenizer) for row in checked + judged]
    failures_before = sum(CHECK_FAILURES.values())
    progress = progress or Progress("eval", len(prompts), echo=False)   # default: reported nowhere
    progress.update(0)
    start = time.perf_counter()
    groups = engine.generate(prompts, replace(sampling, n=k), done=progress.update)   # [len(rows)][k]
    seconds = time.perf_counter() - start
    progress.update(len(prompts), final=True)
    metrics, samples = EvalMetrics(k), []
    for i, (row, group) in enumerate(zip(checked, groups[:len(checked)], strict=True)):
        texts = [c.text for c in group]
        scores = score_group(texts, [len(c.token_ids) for c in group], [c.finished for c in group], row,
                             template.extract, template.format_reward, language)
        metrics.update(scores, task=row.get("task"))
        if i < n_samples:
            samples += [{"id": row.get("id", i), "prompt": prompts[i], "answer": row["answer"], "completion": c.text,
                         "extracted": template.extract(c.text), "finished": c.finished} for c in group]
    tokens = sum(len(c.token_ids) for group in groups for c in group)
    failures = sum(CHECK_FAILURES.values()) - failures_before
    result = metrics.compute() | {"prompts": len(checked), "check_failures": failures}
    if judged:
        texts = [[c.text for c in group] for group in groups[len(checked):]]
        judged_metrics, judge_scores = judge_groups(judges, judged, texts, template.format_reward)
        result |= judged_metrics
        samples += [{"id": row.get("id", i), "kind": row["kind"], "prompt": prompts[len(checked) + i], "completion": t,
                     **{name: s[i * k + j] for name, s in judge_scores.items()}}
                    for i, row in enumerate(judged[:n_samples]) for j, t in enumerate(texts[i])]
    speed = {"generate_s": round(seconds, 3), "tokens": tokens, "tokens_per_s": round(tokens / max(seconds, 1e-9), 1)}
    return {"metrics": result, "speed": speed, "samples": samples}


def write_report(out_dir: Path, name: str, result: dict, info: dict) -> None:
    """metrics.json (metrics, speed and the run's settings), metrics.md and samples.jsonl in `out_dir`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = {"name": name, **info, "metrics": result["metrics"], "speed": result["speed"]}
    # each file written whole or not at all (r1lab.infra.atomic); metrics.json last, so its presence means a finished report
    write_atomic(out_dir / "samples.jsonl",
                 "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in result["samples"]).encode())
    write_atomic(out_dir / "metrics.md", (metrics_table({name: result["metrics"]}) + "\n").encode())
    write_atomic(out_dir / "metrics.json", (json.dumps(report, indent=2) + "\n").encode())


def run(cfg: DictConfig) -> dict[str, float]:
    """Config -> rows -> evaluate -> report files; returns the metrics."""
    files = OmegaConf.to_object(cfg.data.files) if OmegaConf.is_config(cfg.data.files) else cfg.data.files
    rename = OmegaConf.to_object(cfg.data.rename) if cfg.data.get("rename") else None
    judges = {name: hydra.utils.instantiate(spec) for name, spec in (cfg.get("judges") or {}).items()}
    row_format = hydra.utils.instantiate(cfg.data.row_format) if cfg.data.get("row_format") else None
    checked, judged = split_kinds(read_rows(files, COLUMNS, rename=rename, split=cfg.data.split, nonempty=("prompt",),
                                            row_format=row_format), bool(judges))
    rows = spread(select_rows(checked, cfg.data.get("where")), cfg.limit) + spread(judged, cfg.get("limit_general"))
    rows = [row | {"answer": str(row["answer"])} for row in rows]
    sampling = hydra.utils.instantiate(cfg.sampling)
    result = evaluate(cfg.model_dir, rows, hydra.utils.instantiate(cfg.template), hydra.utils.instantiate(cfg.rollout),
                      sampling, cfg.k, dtype=cfg.dtype, language=cfg.language, n_samples=cfg.n_samples, judges=judges,
                      progress=Progress(cfg.task_name, len(rows), hydra_run_file(), unit="prompt"))
    name = cfg.name or Path(cfg.model_dir).name
    info = {"model_dir": str(cfg.model_dir), "data": files, "k": cfg.k, "sampling": asdict(replace(sampling, n=cfg.k)),
            "judges": OmegaConf.to_container(cfg.judges, resolve=True) if cfg.get("judges") else None}
    write_report(Path(cfg.output_dir), name, result, info)
    print(metrics_table({name: result["metrics"]}))
    print(f"generation: {result['speed']}; report in {cfg.output_dir}")
    return result["metrics"]


@entry_point("eval.yaml")
def main(cfg: DictConfig) -> dict[str, float]:
    return run(cfg)


if __name__ == "__main__":
    main()
