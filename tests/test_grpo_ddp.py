"""GRPO under DDP (2 CPU processes, gloo): each step's prompts are split across ranks with none lost or repeated,
and each prompt's whole group of G completions is sampled and scored on the rank that owns it."""

import json
import subprocess
import sys


def test_ddp_splits_prompts_without_loss_or_repeats(artifacts_dir, tmp_path):
    ledger = tmp_path / "ledger"
    overrides = ["experiment=r1_zero", "model=tiny", f"model.path={artifacts_dir}/models/tiny",
                 f"paths.world_dir={artifacts_dir}/world", f"paths.log_dir={tmp_path}", f"hydra.run.dir={tmp_path}/run",
                 "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_steps=3",
                 "trainer.limit_val_batches=0", "logger=csv", "data.batch_size=4", "module.num_generations=2",
                 "module.max_new_tokens=8", "optimized_metric=null", "callbacks.model_checkpoint=null",
                 "+callbacks.ledger._target_=r1lab.callbacks.PromptLedger", f"+callbacks.ledger.out_dir={ledger}"]
    done = subprocess.run([sys.executable, "-m", "r1lab.train", *overrides], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads(line) for rank in (0, 1) for line in open(ledger / f"prompts.rank{rank}.jsonl")]
    by_step: dict[int, dict[int, list]] = {}
    for r in records:
        by_step.setdefault(r["step"], {})[r["rank"]] = r["ids"]
    assert sorted(by_step) == [0, 1, 2]
    seen = []
    for ranks in by_step.values():
        assert sorted(ranks) == [0, 1] and all(len(ids) == 4 for ids in ranks.values())
        assert not set(ranks[0]) & set(ranks[1])            # no prompt on both ranks in a step
        seen += ranks[0] + ranks[1]
    assert len(seen) == len(set(seen)) == 24                 # 3 steps x 2 ranks x 4 prompts, none twice
    assert (tmp_path / "run" / "model" / "config.json").is_file()
