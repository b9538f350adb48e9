"""Full fine-tuning vs LoRA (`module/peft=lora`) on the demo model: SFT steps/s and the memory of parameters,
gradients and optimizer state, side by side in one run (CPU, float32, AdamW, random token batches).

Usage: .venv/bin/python bench/peft.py [--model artifacts/models/demo] [--steps 10] [--batch 8] [--seq 128]
Writes the table to stdout and bench/RESULTS_peft.md.
"""

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]  # this file is no `peft`

import torch
from peft import LoraConfig

from r1lab.infra.hf import load_model
from r1lab.infra.peft import apply_peft

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def run(model_path: str, peft: LoraConfig | None, steps: int, batch: int, seq: int) -> dict:
    torch.manual_seed(0)
    model = apply_peft(load_model(model_path), peft)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (steps + 2, batch, seq))
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        loss = model(input_ids=ids[i], labels=ids[i]).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
    elapsed = time.perf_counter() - start
    state = [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    return {"params": tensor_bytes(model.parameters()), "trainable": sum(p.numel() for p in params),
            "grads": tensor_bytes(p.grad for p in params), "optim": tensor_bytes(state), "steps_per_s": steps / elapsed}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="artifacts/models/demo")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    lora = LoraConfig(r=args.rank, lora_alpha=2 * args.rank, lora_dropout=0.0, target_modules=TARGETS)
    rows = {"full": run(args.model, None, args.steps, args.batch, args.seq),
            f"LoRA r={args.rank}": run(args.model, lora, args.steps, args.batch, args.seq)}
    mib = lambda b: f"{b / 2**20:.1f}"
    lines = ["| run | trainable params | params MiB | grads MiB | optimizer state MiB | params+grads+optim MiB | "
             "steps/s |", "|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['trainable']:,} | {mib(r['params'])} | {mib(r['grads'])} | {mib(r['optim'])} | "
                     f"{mib(r['params'] + r['grads'] + r['optim'])} | {r['steps_per_s']:.2f} |")
    command = (f".venv/bin/python bench/peft.py --model {args.model} --steps {args.steps} --batch {args.batch} "
               f"--seq {args.seq} --rank {args.rank}")
    text = "\n".join(["# SFT: full fine-tuning vs LoRA on the demo model", "",
                      f"Command: `{command}` ({platform.machine()}, {torch.get_num_threads()} CPU threads, float32, "
                      f"AdamW, batch {args.batch} x {args.seq} tokens, {args.steps} timed steps after 2 warm-up).",
                      "", *lines, ""])
    print(text)
    Path(__file__).with_name("RESULTS_peft.md").write_text(text)


if __name__ == "__main__":
    main()
