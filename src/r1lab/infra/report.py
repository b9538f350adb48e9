"""Reports of evaluations: a side-by-side table of `r1lab.eval` outputs, and a pipeline's report.md.

`comparison` puts evaluations in one markdown table (headline metrics first). `pipeline_report` writes a pipeline's
report.md: the findings (r1lab.infra.findings) with the base's and R1-Zero's answers to the same prompts, the table for
every model the pipeline evaluated, PNG curves of its RL stages (reward, val pass@1, language mixing, response length,
re-check share) and each stage's wall time. `summary` is what a pipeline prints at its end.
"""

import csv
import json
from pathlib import Path

from r1lab.infra.findings import BASE_VS_RL, finding_lines, findings, side_by_side

COLUMNS = ("pass@1", "format", "lang_mix", "length", "recheck", "terse", "answered", "truncated", "prompts",
           "helpfulness", "unsafe", "leak", "format_general", "prompts_general")  # the last five: judged (maths.judges)


def _cell(value) -> str:
    """One table cell: floats with three decimals.

    >>> _cell(0.12345), _cell(7), _cell(None)
    ('0.123', '7', '-')
    """
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def metrics_table(rows: dict[str, dict]) -> str:
    """A markdown table, one row per model name, one column per metric (union over models, first-seen order).

    >>> print(metrics_table({"base": {"pass@1": 0.25}, "cold_start": {"pass@1": 0.5, "format": 1.0}}))
    | model | pass@1 | format |
    |---|---|---|
    | base | 0.250 | - |
    | cold_start | 0.500 | 1.000 |
    """
    columns = list(dict.fromkeys(name for metrics in rows.values() for name in metrics))
    lines = ["| model | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += [f"| {model} | " + " | ".join(_cell(m.get(c)) for c in columns) + " |" for model, m in rows.items()]
    return "\n".join(lines)


def load_metrics(path: str | Path) -> dict:
    path = Path(path)
    path = path / "metrics.json" if path.is_dir() else path
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.json (run `python -m r1lab.eval ... output_dir=...` first)")
    return json.loads(path.read_text())["metrics"]


def comparison(named: dict[str, str | Path]) -> str:
    """The table: headline metrics first (cons@k wherever it sits), the per-task pass@1 after them."""
    rows = {name: load_metrics(path) for name, path in named.items()}
    ordered = {}
    for name, metrics in rows.items():
        head = [c for c in COLUMNS[:1] if c in metrics] + [c for c in metrics if c.startswith("cons@")]
        head += [c for c in COLUMNS[1:] if c in metrics]
        ordered[name] = {c: metrics[c] for c in head + sorted(c for c in metrics if c.startswith("pass@1/"))}
    return metrics_table(ordered)


CURVES = {  # plot file -> (metric logged by GRPOModule, y label)
    "reward.png": ("train/reward_mean", "mean reward"),
    "pass_at_1.png": ("val/pass@1", "val pass@1"),
    "lang_mix.png": ("train/lang_mix", "language-mixing rate"),
    "length.png": ("train/completion_len_mean", "response length (tokens)"),
    "recheck.png": ("train/recheck", "re-check share"),
}
HEADLINE = ("pass@1", "length", "recheck", "terse", "lang_mix", "helpfulness", "unsafe")   # printed at a pipeline's end


def read_curve(metrics_csv: Path, name: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one metric in a Lightning CSVLogger's metrics.csv; rows without it are skipped."""
    with open(metrics_csv, newline="") as f:
        points = [(int(row["step"]), float(row[name])) for row in csv.DictReader(f) if row.get(name) not in (None, "")]
    return [s for s, _ in points], [v for _, v in points]


def plot_curves(runs: dict[str, Path], out_dir: Path) -> list[str]:
    """One PNG per curve in CURVES, a line per RL run (name -> its metrics.csv); returns the files written."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for file, (metric, label) in CURVES.items():
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for run, metrics_csv in runs.items():
            steps, values = read_curve(metrics_csv, metric)
            if steps:
                ax.plot(steps, values, label=run, marker="." if len(steps) < 20 else None)
        if ax.lines:
            ax.set(xlabel="RL step", ylabel=label, title=label)
            ax.legend()
            fig.tight_layout()
            fig.savefig(out_dir / file, dpi=100)
            written.append(file)
        plt.close(fig)
    return written


def evaluations(lineage: dict) -> dict[str, str]:
    """model -> metrics.json of each finished evaluation of a pipeline's lineage."""
    return {name.removeprefix("eval_"): s["outputs"]["metrics"] for name, s in lineage["stages"].items()
            if name.startswith("eval_") and s.get("status") == "done"}


def headline(rows: dict[str, dict]) -> str:
    """The HEADLINE columns that some model reports, one row per model.

    >>> print(headline({"base": {"pass@1": 0.25, "format": 1.0}, "rl": {"pass@1": 0.5, "terse": 0.1}}))
    | model | pass@1 | terse |
    |---|---|---|
    | base | 0.250 | - |
    | rl | 0.500 | 0.100 |
    """
    columns = [c for c in HEADLINE if any(c in metrics for metrics in rows.values())]
    return metrics_table({model: {c: metrics.get(c) for c in columns} for model, metrics in rows.items()})


def summary(lineage: dict) -> str:
    """What a pipeline prints at its end: the findings, each marked as holding or not, and the headline table."""
    rows = {model: load_metrics(path) for model, path in evaluations(lineage).items()}
    if not rows:
        return "(no evaluation has finished)"
    return "\n".join(["Findings:", *finding_lines(findings(rows)), "", headline(rows)])


def findings_section(evals: dict[str, str]) -> list[str]:
    """The report's opening: the findings, then the base's and R1-Zero's completions of the same prompts."""
    rows = {model: load_metrics(path) for model, path in evals.items()}
    lines = ["## Findings", "", ("Each finding compares two models' evaluations below and holds when the metric moves "
                                 "the stated way (the demo's runs are short: only the direction decides); one whose "
                                 "models were not evaluated is left out."), "",
             *finding_lines(findings(rows)), ""]
    pairs = side_by_side({m: Path(evals[m]).parent / "samples.jsonl" for m in BASE_VS_RL if m in evals})
    if pairs:
        lines += ["## Base vs R1-Zero, same prompts", "", ("The first completion of each (from the evaluations' "
                                                           "samples.jsonl), trimmed."), "", *pairs]
    return lines


def pipeline_report(out_dir: Path, lineage: dict, curves: list[str]) -> Path:
    """`report.md` of a pipeline: the findings, the evaluation table of every model, the RL curves, and each stage's
    wall time."""
    stages = lineage["stages"]
    evals = evaluations(lineage)
    runs = {name: Path(stages[name]["outputs"]["model"]).parent / "csv" / "metrics.csv" for name in curves
            if stages.get(name, {}).get("status") == "done"}
    plots = plot_curves({n: p for n, p in runs.items() if p.is_file()}, out_dir)
    walls = [(name, s.get("wall_s"), s.get("resumed_from")) for name, s in stages.items()]
    lines = [f"# Pipeline {lineage['pipeline_id']}", "", *findings_section(evals), "## Evaluations", "",
             ("Every model evaluated on the same held-out sets (`python -m r1lab.eval`, settings in each stage's "
              "`.hydra/config.yaml`)."), "", comparison(evals) if evals else "(no evaluation has finished)", ""]
    lines += [f"![{p}]({p})" for p in plots] + ["", "| stage | wall (min) | resumed from |", "|---|---|---|"]
    lines += [f"| {n} | {w / 60:.1f} | {r or '-'} |" if w is not None else f"| {n} | - | {r or '-'} |"
              for n, w, r in walls]
    total = sum(w for _, w, _ in walls if w is not None)
    lines += ["", f"Total wall time of the stages: {total / 60:.1f} min."]
    if lineage.get("wall_s") is not None:   # stages side by side: less than their sum
        lines += [f"The pipeline took {lineage['wall_s'] / 60:.1f} min of wall time for them, running up to "
                  f"{lineage.get('jobs', 1)} at once."]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return path
