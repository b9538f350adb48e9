"""Padding in the demo's batches and what it costs, side by side in one run: the first `--steps` training batches of
rejection SFT (the same rows padded together, as before, or its reasoning and general rows padded apart, as now) and
of the helpfulness reward model (pairs in random order, as before, or length-bucketed, as now), each timed as a
training step of the module that trains on it (forward, backward, AdamW), the layouts interleaved. The harmlessness
reward model's labelled rows stay shuffled (data_modules/preferences.py).

Usage (after `make demo`; OMP_NUM_THREADS=1 times a demo stage that runs beside another):
    OMP_NUM_THREADS=1 .venv/bin/python bench/padding.py [--run-dir artifacts/demo] [--world artifacts/world] [--steps 20]
Writes the table to stdout and bench/RESULTS_padding.md.
"""

import argparse
import os
import platform
import sys
import time
from functools import partial
from pathlib import Path

sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).parent.resolve()]  # bench/peft.py is no `peft`

import torch
from torch.utils.data import DataLoader

from data_modules import PreferenceDataModule, RejectionSampledDataModule
from data_modules.preferences import preference_batch
from r1lab.data.encode import pad_batch
from r1lab.stages.reward_model import RewardModelModule, bradley_terry_loss
from r1lab.stages.sft import SFTModule


def positions(batch) -> tuple[int, int]:
    """(tokens, padded positions) of a batch or of a batch in parts."""
    parts = batch if isinstance(batch, list) else [batch]
    return sum(int(p["attention_mask"].sum()) for p in parts), sum(p["attention_mask"].numel() for p in parts)


def sft_step(module: SFTModule, batch) -> None:
    module._loss(batch)[0].backward()


def rm_step(module: RewardModelModule, batch) -> None:
    module.hparams.loss(module._scores(batch), batch["labels"])[0].backward()


def timed(step, module, batches: list) -> float:
    """Seconds per step over `batches` (after one warm-up step), with AdamW."""
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-5)
    step(module, batches[0])
    optimizer.zero_grad()
    start = time.perf_counter()
    for batch in batches:
        step(module, batch)
        optimizer.step()
        optimizer.zero_grad()
    return (time.perf_counter() - start) / len(batches)


def workloads(run_dir: Path, world: Path, steps: int) -> dict:
    """name -> (step, module, {layout: batches})."""
    model = str(run_dir / "pretrain" / "model")
    out = {}
    sft = RejectionSampledDataModule(str(run_dir / "rejection_sampling"), str(world / "general_sft" / "train.jsonl"),
                                     model)
    sft.setup("fit")
    loader = sft.train_dataloader()   # the same rows both ways: the sampler's first `steps` batches
    rows = [[loader.dataset[i] for i in batch] for batch, _ in zip(loader.batch_sampler, range(steps))]
    together = [pad_batch(r, sft.tokenizer.pad_token_id) for r in rows]
    apart = [loader.collate_fn(r) for r in rows]
    module = SFTModule(model, partial(torch.optim.AdamW))
    module.configure_model()
    out["rejection SFT (16 rows: 12 reasoning + 4 general)"] = (
        sft_step, module, {"padded together": together, "reasoning and general padded apart": apart})
    data = PreferenceDataModule(str(world / "preferences" / "helpfulness_train.jsonl"), None, model)
    data.setup("fit")
    collate = partial(preference_batch, pad_id=data.tokenizer.pad_token_id)
    shuffled = DataLoader(data.examples["train"], batch_size=data.batch_size, shuffle=True, collate_fn=collate,
                          generator=torch.Generator().manual_seed(0))
    layouts = {"random order": [b for b, _ in zip(shuffled, range(steps))],
               "length-bucketed": [b for b, _ in zip(data.train_dataloader(), range(steps))]}
    module = RewardModelModule(model, partial(torch.optim.AdamW), bradley_terry_loss)
    module.configure_model()
    out["helpfulness RM (16 pairs)"] = (rm_step, module, layouts)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", default="artifacts/demo", type=Path)
    parser.add_argument("--world", default="artifacts/world", type=Path)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=Path(__file__).parent / "RESULTS_padding.md", type=Path)
    args = parser.parse_args()
    rows = []
    for name, (step, module, layouts) in workloads(args.run_dir, args.world, args.steps).items():
        seconds = {layout: [] for layout in layouts}
        for _ in range(2):   # two interleaved rounds; the better of each
            for layout, batches in layouts.items():
                seconds[layout].append(timed(step, module, batches))
        base = None
        for layout, batches in layouts.items():
            tokens, padded = map(sum, zip(*(positions(b) for b in batches)))
            best = min(seconds[layout])
            base = base or best
            rows.append(f"| {name} | {layout} | {padded / len(batches):.0f} | {1 - tokens / padded:.1%} | "
                        f"{best * 1000:.0f} | {base / best:.2f}x |")
    table = "\n".join(["| workload | batches | positions/batch | padding | ms/step | speed |",
                       "|---|---|---|---|---|---|", *rows])
    threads = f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} " if "OMP_NUM_THREADS" in os.environ else ""
    header = (f"# Padding in the demo's batches (bench/padding.py)\n\n"
              f"Command: `{threads}.venv/bin/python bench/padding.py --steps {args.steps}`  \n"
              f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} threads, {platform.machine()}  \n"
              f"Data: {args.run_dir} (rejection sampling's kept samples, the base model) and {args.world}; the first "
              f"{args.steps} training batches of each layout, the better of 2 interleaved rounds. speed: against the "
              f"first layout of the workload.\n")
    text = header + "\n" + table + "\n"
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
