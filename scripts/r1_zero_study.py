"""R1-Zero's findings in miniature, over seeds: from the demo's base (`make demo` first), R1-Zero runs with each seed,
then every model (the base once) evaluated on the same held-out arithmetic prompts. Prints and writes a markdown table
of pass@1, response length and the shares of re-checking and terse responses, base and each seed, and the training
curves' first and last values (response length, re-check share, reward).

    python scripts/r1_zero_study.py --seeds 0 1 2 --out artifacts/study/r1_zero

Each run is `python -m r1lab.train experiment=<experiment> seed=<s> paths.runs_dir=<runs dir>`; each evaluation is
`python -m r1lab.eval model_dir=<run>/model template=r1_zero rollout=vllm 'data.where={task:[arithmetic]}'`.
"""

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

METRICS = ("pass@1", "length", "recheck", "terse")
CURVES = ("train/completion_len_mean", "train/recheck", "train/reward_mean")


def call(cmd: list[str], log: Path) -> float:
    """Run `python -m ...cmd`, its output to `log`; returns the wall time, raises with the log's tail on failure."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:2])} failed, see {log}:\n{proc.stderr[-1500:]}")
    return time.perf_counter() - start


def evaluate(model_dir: Path, out: Path, args: argparse.Namespace) -> dict:
    if not (out / "metrics.json").is_file():
        call(["r1lab.eval", f"model_dir={model_dir}", "template=r1_zero", "rollout=vllm",
              "data.where={task:[arithmetic]}", *([f"limit={args.limit}"] if args.limit else []),
              f"hydra.run.dir={out}"], out.with_suffix(".log"))
    return json.loads((out / "metrics.json").read_text())["metrics"]


def curves(metrics_csv: Path) -> dict[str, tuple[float, float]]:
    """(first, last) logged value of each of CURVES."""
    rows = list(csv.DictReader(open(metrics_csv)))
    series = {name: [float(r[name]) for r in rows if r.get(name)] for name in CURVES}
    return {name: (values[0], values[-1]) for name, values in series.items() if values}


def table(base: dict, runs: dict[int, dict]) -> str:
    head = "| model | " + " | ".join(METRICS) + " | " + " | ".join(f"{c} first -> last" for c in CURVES) + " |"
    lines = [head, "|---" * (1 + len(METRICS) + len(CURVES)) + "|"]
    lines.append("| base | " + " | ".join(f"{base[m]:.3f}" for m in METRICS) + " |" + " |" * len(CURVES))
    for seed, run in runs.items():
        trend = [f"{run['curves'][c][0]:.3f} -> {run['curves'][c][1]:.3f}" if c in run["curves"] else "-"
                 for c in CURVES]
        lines.append(f"| seed {seed} | " + " | ".join(f"{run['eval'][m]:.3f}" for m in METRICS) + " | "
                     + " | ".join(trend) + " |")
    mean = {m: sum(r["eval"][m] for r in runs.values()) / len(runs) for m in METRICS}
    lines.append("| mean of seeds | " + " | ".join(f"{mean[m]:.3f}" for m in METRICS) + " |" + " |" * len(CURVES))
    change = [f"{100 * (mean['pass@1'] - base['pass@1']):+.1f} points",
              f"{100 * (mean['length'] / base['length'] - 1):+.0f}%",
              f"x{mean['recheck'] / base['recheck']:.2f}" if base["recheck"] else "from zero",
              f"{100 * (mean['terse'] - base['terse']):+.1f} points"]
    lines.append("| change | " + " | ".join(change) + " |" + " |" * len(CURVES))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--experiment", default="r1_zero_long")
    parser.add_argument("--limit", type=int, default=None, help="held-out prompts (default: all)")
    parser.add_argument("--out", type=Path, default=Path("artifacts/study/r1_zero"))
    parser.add_argument("--runs-dir", default="artifacts/demo", help="where the demo's pretrain/model is")
    parser.add_argument("overrides", nargs="*", help="extra overrides for every training run")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    base = evaluate(Path(args.runs_dir) / "pretrain" / "model", args.out / "eval_base", args)
    runs = {}
    for seed in args.seeds:
        run_dir = args.out / f"seed{seed}"
        if not (run_dir / "model").is_dir():
            wall = call(["r1lab.train", f"experiment={args.experiment}", f"seed={seed}", f"paths.runs_dir={args.runs_dir}",
                         "logger=csv", f"hydra.run.dir={run_dir}", *args.overrides], args.out / f"seed{seed}.log")
            print(f"seed {seed}: trained in {wall / 60:.1f} min", flush=True)
        runs[seed] = {"eval": evaluate(run_dir / "model", args.out / f"eval_seed{seed}", args),
                      "curves": curves(run_dir / "csv" / "metrics.csv")}
    text = table(base, runs)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
