"""Live progress (r1lab.infra.progress): the reporter's throttling and progress.json, the callback in real tiny
training runs (SFT and GRPO), the prompts counted by r1lab.sample and r1lab.eval, and the pipeline's stage line."""

import io
import json
import sys
import threading
from collections import Counter
from functools import partial
from pathlib import Path

import pytest

from r1lab.infra.progress import Board, Progress
from r1lab.pipeline import Stage, run_stage
from r1lab.train import train

KEYS = {"unit", "step", "total", "elapsed_s", "remaining_s", "metric", "value", "updated"}


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_reports_at_most_every_every_s_and_at_the_end(tmp_path, capsys):
    clock, path = Clock(), tmp_path / "progress.json"
    progress = Progress("pretrain", 100, path, every_s=10, clock=clock)
    clock.now += 2
    assert progress.update(1)["remaining_s"] is None                      # no rate before a second point
    clock.now += 5
    assert progress.update(11) is None and json.loads(path.read_text())["step"] == 1   # 5 s later: not yet
    clock.now += 5
    record = progress.update(21, "train/loss", 2.5)                          # 20 steps in 10 s since the first
    assert record["remaining_s"] == pytest.approx(39.5) and record["elapsed_s"] == 12.0
    assert json.loads(path.read_text()) == record and set(record) == KEYS
    clock.now += 1
    assert progress.update(22, final=True)["remaining_s"] == 0.0             # the end always reports
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["[pretrain] step 1/100  0.0 min elapsed",
                     "[pretrain] step 21/100  0.2 min elapsed  ~0.7 min left  train/loss 2.5",
                     "[pretrain] step 22/100  0.2 min elapsed  ~0.0 min left"]
    assert [p.name for p in tmp_path.iterdir()] == ["progress.json"]        # written atomically: no temporary left


def test_sft_run_prints_progress_and_writes_progress_json(compose_train, tmp_path, capsys):
    cfg = compose_train("experiment=cold_start", "logger=csv", "trainer.max_steps=4", "trainer.limit_val_batches=0",
                        "data.batch_size=2", "callbacks.progress.every_s=0")
    train(cfg)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[cold_start] step")]
    assert [line.split()[2] for line in lines] == ["1/4", "2/4", "3/4", "4/4", "4/4"]   # every step, then the end
    assert "train/loss" in lines[-1] and "min left" in lines[1]
    record = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert record["step"] == record["total"] == 4 and record["metric"] == "train/loss" and record["value"] > 0
    assert record["remaining_s"] == 0.0 and set(record) == KEYS


def test_grpo_run_reports_its_reward(compose_train, tmp_path):
    cfg = compose_train("experiment=r1_zero", "logger=csv", "trainer.max_steps=2", "trainer.limit_val_batches=0",
                        "module.sampling.n=2", "module.sampling.max_new_tokens=8", "data.batch_size=2",
                        "callbacks.progress.every_s=0")
    train(cfg)
    record = json.loads((tmp_path / "run" / "progress.json").read_text())
    assert record["step"] == record["total"] == 2 and record["metric"] == "train/reward_mean"


def test_sampling_counts_prompts_from_the_first_shard_it_samples(tmp_path, capsys):
    """Shards finished by an earlier run are skipped without a report; each new one is counted after it is written."""
    from r1lab.sample import json_bytes, write_shards

    (tmp_path / "shard-00000.counts.json").write_bytes(json_bytes({"prompts": 2, "rows": 0, "counts": {}}))
    rows = [{"prompt": f"p{i}"} for i in range(5)]
    progress = Progress("rejection_sampling", len(rows), tmp_path / "progress.json", unit="prompt", every_s=0)
    write_shards(rows, tmp_path, "jsonl", 2, Counter(), lambda part, start, index: ([], Counter()), progress)
    done = [line.split()[2] for line in capsys.readouterr().out.splitlines() if "prompt " in line]
    assert done == ["2/5", "4/5", "4/5", "5/5", "5/5"]
    assert json.loads((tmp_path / "progress.json").read_text())["step"] == 5


def test_evaluation_reports_its_prompts_without_changing_samples(world_dir, tokenizer_dir, tmp_path, capsys):
    from r1lab.eval import evaluate
    from r1lab.maths.formats import Template, render_chat
    from r1lab.maths.rewards import cold_start_format_reward, extract_answer
    from r1lab.rollout.engine import HFRollout, SamplingConfig

    rows = [json.loads(line) for line in open(world_dir / "reasoning" / "test.jsonl")][:5]
    chat = Template(render_chat, partial(extract_answer, source="summary"), cold_start_format_reward)
    args = (str(tokenizer_dir), rows, chat, partial(HFRollout, batch_size=2), SamplingConfig(max_new_tokens=4), 2)
    plain = evaluate(*args)
    path = tmp_path / "progress.json"
    counted = evaluate(*args, progress=Progress("eval_tiny", len(rows), path, unit="prompt", every_s=0))
    assert counted["samples"] == plain["samples"] and counted["metrics"] == plain["metrics"]
    done = [line.split()[2] for line in capsys.readouterr().out.splitlines() if line.startswith("[eval_tiny]")]
    assert done == ["0/5", "2/5", "4/5", "5/5", "5/5"]                     # started, each batch of 2, the end
    assert json.loads(path.read_text())["step"] == 5


FAKE_STAGE = """
import json, os, sys, time
def write(step):
    with open("progress.json.tmp", "w") as f:
        json.dump({"unit": "prompt", "step": step, "total": 4, "elapsed_s": 6.0 * step, "remaining_s": 6.0 * (4 - step),
                   "metric": None, "value": None, "updated": str(step)}, f)
    os.replace("progress.json.tmp", "progress.json")
for step in (1, 2):
    write(step)
    time.sleep(0.5)
open("metrics.json", "w").write("{}")
sys.exit(int(sys.argv[1]))
"""


def fake_stage(stage_dir: Path, board: Board, code: int = 0) -> float:
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "progress.json").write_text(json.dumps({"step": 99, "total": 4, "elapsed_s": 0}))  # a killed run's
    cmd = [sys.executable, "-c", f"import os; os.chdir({str(stage_dir)!r}); exec({FAKE_STAGE!r})", str(code)]
    return run_stage(Stage(stage_dir.name, "eval"), stage_dir, cmd, {}, board, f"[ 9/13] {stage_dir.name:<12}")


def test_the_pipeline_prints_a_stage_progress_line_when_it_changes(tmp_path):
    out = io.StringIO()
    fake_stage(tmp_path / "eval_tiny", Board(out, tty=False, poll_s=0.05, every_s=0))
    lines = out.getvalue().splitlines()
    assert lines == ["[ 9/13] eval_tiny    prompt 1/4  0.1 min elapsed  ~0.3 min left",
                     "[ 9/13] eval_tiny    prompt 2/4  0.2 min elapsed  ~0.2 min left"]   # each record once
    assert "stage.log" in {p.name for p in (tmp_path / "eval_tiny").iterdir()}


def test_on_a_terminal_the_line_is_redrawn_in_place_then_cleared(tmp_path):
    out = io.StringIO()
    fake_stage(tmp_path / "eval_tiny", Board(out, tty=True, poll_s=0.05))
    text = out.getvalue()
    assert "\n" not in text and text.count("\r\x1b[2K[ 9/13] eval_tiny prompt 2/4") >= 2   # redrawn every poll
    assert text.endswith("\r\x1b[2K")                                       # cleared for the stage's next line


def test_concurrent_stages_on_a_terminal_print_whole_lines(tmp_path):
    """Two evaluations side by side (threads): each record on a line of its own, none drawn over the other's."""
    out = io.StringIO()
    board = Board(out, tty=True, poll_s=0.05, every_s=0)
    threads = [threading.Thread(target=fake_stage, args=(tmp_path / name, board)) for name in ("eval_a", "eval_b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    whole = [line.rsplit("\r\x1b[2K", 1)[-1] for line in out.getvalue().split("\n")[:-1]]   # newline-ended lines
    for name in ("eval_a", "eval_b"):
        assert f"[ 9/13] {name:<12} prompt 2/4  0.2 min elapsed  ~0.2 min left" in whole
    assert all(line.count("prompt") == 1 for line in whole)


def test_a_failing_stage_still_raises_with_its_exit_code(tmp_path):
    with pytest.raises(RuntimeError, match=r"stage 'eval_tiny' failed \(exit 3\)"):
        fake_stage(tmp_path / "eval_tiny", Board(io.StringIO(), tty=False, poll_s=0.05), code=3)
