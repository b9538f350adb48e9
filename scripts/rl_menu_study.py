"""The RL menu on the demo's R1-Zero: paper GRPO, DAPO, GSPO and one-step-off-policy GRPO, several seeds each, from the
demo's base model (`make demo` first). Writes <out>/<variant>_s<seed>/ runs and prints a markdown table of held-out
pass@1 (val/pass@1 on 100 held-out prompts at the last step), training reward, entropy and wall time.

    python scripts/rl_menu_study.py --seeds 0 1 2 --jobs 2 --out artifacts/study/rl_menu

Each run is `python -m r1lab.train experiment=<...> seed=<s> paths.runs_dir=artifacts/demo`; `--jobs` runs that many
at once, each with its share of the CPU threads.
"""

import argparse
import csv
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

VARIANTS = {
    "grpo": ["experiment=r1_zero"],
    "dapo": ["experiment=r1_zero_dapo"],
    "gspo": ["experiment=r1_zero", "module/loss=gspo"],
    "one_step_off": ["experiment=r1_zero", "module.max_staleness=1"],
    "grpo_mu2": ["experiment=r1_zero", "module.mu=2"],      # two passes per rollout: the ratio leaves 1
    "gspo_mu2": ["experiment=r1_zero", "module/loss=gspo", "module.mu=2"],
}


def run(variant: str, seed: int, out: Path, threads: int, runs_dir: str) -> dict:
    run_dir = out / f"{variant}_s{seed}"
    cmd = [sys.executable, "-m", "r1lab.train", *VARIANTS[variant], f"seed={seed}", f"paths.runs_dir={runs_dir}",
           "logger=csv", f"hydra.run.dir={run_dir}"]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    (out / f"{variant}_s{seed}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode:
        return {"variant": variant, "seed": seed, "error": proc.stderr[-400:], "wall_s": wall}
    rows = list(csv.DictReader(open(run_dir / "csv" / "metrics.csv")))

    def series(name: str) -> list[float]:
        return [float(r[name]) for r in rows if r.get(name)]

    return {"variant": variant, "seed": seed, "wall_s": wall, "pass@1": series("val/pass@1"),
            "reward": series("train/reward_mean"), "entropy": series("train/entropy")}


def table(results: list[dict]) -> str:
    lines = ["| variant | seed | held-out pass@1 by validation | last pass@1 | reward first -> last | entropy last | wall (min) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | {r['seed']} | failed: {r['error'][-120:]!r} | | | | |")
            continue
        p, rw = r["pass@1"], r["reward"]
        lines.append(f"| {r['variant']} | {r['seed']} | {', '.join(f'{x:.3f}' for x in p)} | {p[-1]:.3f} | "
                     f"{rw[0]:.3f} -> {rw[-1]:.3f} | {r['entropy'][-1]:.3f} | {r['wall_s'] / 60:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("artifacts/study/rl_menu"))
    parser.add_argument("--runs-dir", default="artifacts/demo", help="where the demo's pretrain/model is")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    runs = [(v, s) for s in args.seeds for v in args.variants]
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda vs: run(*vs, args.out, threads, args.runs_dir), runs))
    results.sort(key=lambda r: (list(VARIANTS).index(r["variant"]), r["seed"]))
    text = table(results)
    (args.out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
