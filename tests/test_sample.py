"""Rejection sampling (r1lab.maths.filters, r1lab.sample) and its SFT data (data_modules/rejection.py).

    pytest tests/test_sample.py

Filters on hand-made samples; manifest counts of the session's scripted sampling run (conftest `samples_dir`);
a run killed with SIGKILL and rerun equals an uninterrupted one byte for byte (the tiny model through the CLI); a
malformed prompt row fails before sampling; the reasoning:general ratio holds in every batch.
The rejection_sft experiment's fast dev run is in tests/test_train.py (every experiment config runs there).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hydra
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from data_modules import RejectionSampledDataModule
from r1lab.data.io import DataError, read_rows
from r1lab.maths.filters import screen
from r1lab.maths.formats import cold_start_response
from r1lab.sample import run, start_or_resume

ROOT = Path(__file__).resolve().parents[1]
ROW = {"id": "p1", "prompt": "What is 23 + 45?", "answer": "68", "task": "arithmetic", "numbers": []}
COT = "Let me work through this step by step. 23 + 45 = 68. So the answer is 68."
GOOD = cold_start_response(COT, "The answer is \\boxed{68}.")


def config_filters() -> dict:
    """The filters as configs/sample.yaml sets them up (with its template's answer extraction), in its order."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("sample")
    return {name: hydra.utils.instantiate(spec) for name, spec in cfg.filters.items()}


def with_cot(cot: str) -> str:
    return cold_start_response(cot, "The answer is \\boxed{68}.")


@pytest.mark.parametrize("text, reason", [
    (with_cot(COT.replace("So the answer", "所以 the answer")), "mixed_language"),   # a Chinese word in the CoT
    (with_cot(COT + "\n```python\nprint(23 + 45)\n```"), "code_block"),
    (with_cot(COT + "\n\n" + "I check it again. " * 111 + "OK\n\nDone."), "long_paragraph"),  # 2,000 characters
    (GOOD, "duplicate"),
    (with_cot(COT.replace(" = ", " =  ").upper()), "near_duplicate"),         # case and spacing differ only
    (GOOD.replace("</reasoning_process>", ""), "broken_format"),
    (cold_start_response(COT, "The answer is \\boxed{67}."), "wrong_answer"),
    (with_cot("First 20 + 40 = 60, then 3 + 5 = 8, and 60 + 8 = 68."), None),   # another correct path is kept
])
def test_each_filter_on_a_hand_made_sample(text, reason):
    accepted, rejected = screen([GOOD, text], ROW, config_filters())
    assert accepted == ([0] if reason else [0, 1])
    assert dict(rejected) == ({reason: 1} if reason else {})


def test_a_sample_is_counted_under_its_first_failing_filter():
    """Mixed language and a code block: counted once, under mixed_language, which runs first."""
    both = with_cot(COT + " 所以 ```x```")
    assert screen([both, both, GOOD], ROW, config_filters()) == ([2], {"mixed_language": 2})


def test_manifest_counts_add_up(samples_dir, world_dir):
    """The session's scripted run: 12 prompts x 9 samples, one per outcome (conftest.scripted_samples), m=1."""
    manifest = json.loads((samples_dir / "manifest.json").read_text())
    counts = manifest["counts"]
    assert counts["samples"] == 12 * 9 and manifest["prompts"] == 12 and manifest["rows"] == 12
    outcomes = {name: n for name, n in counts.items() if name != "samples"}
    assert list(outcomes) == ["accepted", "broken_format", "wrong_answer", "mixed_language", "long_paragraph",
                              "code_block", "duplicate", "near_duplicate", "over_cap"]
    assert set(outcomes.values()) == {12} and sum(outcomes.values()) == counts["samples"]
    assert [(s["file"], s["prompts"], s["rows"]) for s in manifest["shards"]] == [
        ("shard-00000.jsonl", 5, 5), ("shard-00001.jsonl", 5, 5), ("shard-00002.jsonl", 2, 2)]
    rows = read_rows(samples_dir, {"prompt": str, "response": str})           # the directory reads as SFT data
    world = json.loads((world_dir / "cold_start" / "train.jsonl").read_text().splitlines()[0])
    assert all(list(r) == list(world) and r["id"].endswith("-0") for r in rows)   # the first sample, as keep=first
    assert all(r["response"].startswith("<reasoning_process>Let me work") for r in rows)
    assert (samples_dir / "summary.md").read_text().startswith("| outcome | samples | share |\n|---|---|---|\n")


def sample_cmd(exe: list[str], world_dir: Path, tokenizer_dir: Path, out: Path, log: Path) -> list[str]:
    return [*exe, f"model_dir={tokenizer_dir}", f"paths.world_dir={world_dir}", f"paths.log_dir={log}",
            f"hydra.run.dir={log}", f"output_dir={out}", "limit=48", "shard_size=3", "k=2", "m=1", "keep=random",
            "sampling.max_new_tokens=24", "~filters.broken_format", "~filters.wrong_answer"]  # random weights


def test_killed_run_resumes_to_the_same_files(world_dir, tokenizer_dir, tmp_path):
    """SIGKILL after the first shard, rerun: every file equals an uninterrupted run's (the installed script)."""
    env = {**os.environ, "R1LAB_ROOT": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    script = shutil.which("r1lab-sample", path=str(Path(sys.executable).parent))
    assert script, "the r1lab-sample console script is not installed (pip install -e .)"
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    done = subprocess.run(sample_cmd([script], world_dir, tokenizer_dir, whole, tmp_path / "log1"), env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| accepted |" in done.stdout
    cmd = sample_cmd([sys.executable, "-m", "r1lab.sample"], world_dir, tokenizer_dir, resumed, tmp_path / "log2")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (resumed / "shard-00000.counts.json").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = sorted(resumed.glob("shard-*.counts.json"))
    assert proc.returncode == -signal.SIGKILL and 1 <= len(finished) < 16 and not (resumed / "manifest.json").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    files = sorted(p.name for p in whole.iterdir())
    assert files == sorted(p.name for p in resumed.iterdir())
    assert {"manifest.json", "settings.json", "summary.md", "shard-00015.counts.json"} <= set(files)
    for name in files:
        assert (whole / name).read_bytes() == (resumed / name).read_bytes(), name
    manifest = json.loads((whole / "manifest.json").read_text())
    assert 0 < manifest["rows"] <= 48 and manifest["counts"]["samples"] == 96
    ids = [json.loads(line)["id"] for p in sorted(whole.glob("shard-*.jsonl")) for line in p.open()]
    assert len(ids) == len(set(ids)) == manifest["rows"]


def test_malformed_prompt_row_fails_before_sampling(compose_train, tokenizer_dir, tmp_path):
    rows = [{"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": "What is 2 + 2?", "answer": "4"},
            {"prompt": 5, "answer": "6"}]
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "samples"
    cfg = compose_train(f"model_dir={tokenizer_dir}", f"data.files={data}", f"output_dir={out}", config_name="sample")

    def never(**_):
        raise AssertionError("a rollout engine was built before the prompts were checked")

    with pytest.raises(DataError, match=re.escape(f"{data}:3: field 'prompt': expected str, got int")):
        run(cfg, rollout_factory=never)
    assert not out.exists()


def test_resuming_with_other_settings_is_refused(tmp_path):
    start_or_resume(tmp_path, {"k": 2})
    (tmp_path / ".shard-00000.jsonl.tmp").write_text("half a shard")
    start_or_resume(tmp_path, {"k": 2})
    assert not (tmp_path / ".shard-00000.jsonl.tmp").exists()
    with pytest.raises(ValueError, match="other settings"):
        start_or_resume(tmp_path, {"k": 3})


def test_parquet_shards_read_back(compose_train, tokenizer_dir, tmp_path):
    out = tmp_path / "samples"
    cfg = compose_train(f"model_dir={tokenizer_dir}", f"output_dir={out}", "format=parquet", "limit=4", "k=2", "m=2",
                        "sampling.max_new_tokens=8", "~filters.broken_format", "~filters.wrong_answer",
                        "~filters.mixed_language", config_name="sample")
    manifest = run(cfg)
    assert manifest["rows"] == 8 and [s["file"] for s in manifest["shards"]] == ["shard-00000.parquet"]
    assert [r["id"][-2:] for r in read_rows(out, {"prompt": str, "response": str})] == ["-0", "-1"] * 4


def test_mixing_ratio_within_every_batch(samples_dir, world_dir, tokenizer_dir):
    """12 rejection-sampled rows, batches of 8 at 3:1: 6 reasoning + 2 general rows each; every sample once an epoch."""
    data = RejectionSampledDataModule(str(samples_dir), str(world_dir / "general_sft" / "train.jsonl"),
                                      str(tokenizer_dir), batch_size=8, ratio=3.0)
    data.setup("fit")
    for _ in range(2):  # two epochs
        batches, seen = list(data.train_dataloader()), []
        assert len(batches) == 2
        for parts in batches:   # the reasoning rows, then the general rows, each padded to its own longest row
            texts = [[data.tokenizer.decode(row[row != -100]) for row in part["labels"]] for part in parts]
            assert [len(t) for t in texts] == [6, 2], texts
            assert all(t.startswith("<reasoning_process>") for t in texts[0]), texts
            assert not any(t.startswith("<reasoning_process>") for t in texts[1]), texts
            assert [int(p["attention_mask"][:, -1].max()) for p in parts] == [1, 1]   # no column of padding only
            seen += texts[0]
        assert len(set(seen)) == 12


def test_missing_shard_is_an_error(samples_dir, world_dir, tokenizer_dir, tmp_path):
    copy = shutil.copytree(samples_dir, tmp_path / "samples")
    (copy / "shard-00001.jsonl").unlink()
    data = RejectionSampledDataModule(str(copy), str(world_dir / "general_sft" / "train.jsonl"), str(tokenizer_dir))
    with pytest.raises(DataError, match="listed shards are missing.*shard-00001.jsonl"):
        data.setup("fit")
