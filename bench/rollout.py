"""HF `generate` vs in-process vLLM on the same model and prompts: generated tokens per second, side by side.

    OMP_NUM_THREADS=2 python bench/rollout.py [model_dir] [--prompts 16] [--n 8] [--max-new-tokens 128]

R1-Zero prompts of the first arithmetic rows of the world's test set, n samples each at T=1 (GRPO's rollout), one
`generate` call per engine after a short warm-up; vLLM's start-up is reported apart. Simplified: one run per engine,
no repeats; fp32 weights (what training uses here).
"""

import argparse
import time

from r1lab.data.io import read_rows
from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.infra.utils import ROOT
from r1lab.maths.formats import render_r1_zero
from r1lab.rollout.engine import HFRollout, SamplingConfig


def timed(engine, prompts: list[str], sampling: SamplingConfig) -> tuple[int, float]:
    """(generated tokens, seconds) of one generate call, after a warm-up on two prompts."""
    engine.generate(prompts[:2], SamplingConfig(n=2, max_new_tokens=8, seed=sampling.seed + 1))
    start = time.perf_counter()
    groups = engine.generate(prompts, sampling)
    return sum(len(c.token_ids) for g in groups for c in g), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", nargs="?", default=str(ROOT / "artifacts" / "demo" / "base" / "model"))
    parser.add_argument("--data", default=str(ROOT / "artifacts" / "world" / "reasoning" / "test.jsonl"))
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    rows = [r for r in read_rows(args.data, {"prompt": str}) if r.get("task") == "arithmetic"][: args.prompts]
    prompts = [render_r1_zero(r["prompt"]) for r in rows]
    sampling = SamplingConfig(n=args.n, temperature=1.0, max_new_tokens=args.max_new_tokens, seed=0)
    model, tokenizer = load_model(args.model_dir).eval(), load_tokenizer(args.model_dir)
    results = {"hf": timed(HFRollout(model, tokenizer), prompts, sampling)}

    from r1lab.rollout.vllm_engine import VLLMRollout  # imports vLLM: after HF ran, so its start-up is measured apart

    start = time.perf_counter()
    engine = VLLMRollout(model, tokenizer)
    startup = time.perf_counter() - start
    results["vllm"] = timed(engine, prompts, sampling)

    print(f"\n{len(prompts)} prompts x {args.n} samples, T=1.0, max_new_tokens={args.max_new_tokens}, {args.model_dir}")
    print("| engine | tokens | seconds | tokens/s |\n|---|---|---|---|")
    for name, (tokens, seconds) in results.items():
        print(f"| {name} | {tokens} | {seconds:.2f} | {tokens / seconds:.0f} |")
    (hf_tokens, hf_s), (vllm_tokens, vllm_s) = results["hf"], results["vllm"]
    print(f"\nvLLM / HF tokens/s: {(vllm_tokens / vllm_s) / (hf_tokens / hf_s):.2f}x; vLLM start-up (import + engine) "
          f"{startup:.1f} s")


if __name__ == "__main__":
    main()
