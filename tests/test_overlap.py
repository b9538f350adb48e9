"""k-step off-policy GRPO (r1lab.rollout.overlap): the delay line and its versions on a fake engine, the checkpoint of
the in-flight batches, and on the tiny model: max_staleness 0 is synchronous GRPO bit for bit, max_staleness 1
trains every batch one version late with the sampler's log-probs, and a run killed at a random point and resumed
trains every prompt exactly once, as the uninterrupted run does."""

import json
import threading

import pytest
import torch

from r1lab.rollout.engine import Completion, SamplingConfig
from r1lab.rollout.overlap import OverlappedRollout

SAMPLING = SamplingConfig(n=2)


class FakeEngine:
    """Answers each prompt with `n` completions naming the prompt, the seed and the weights' version; records the
    prompts of each call and the threads the calls ran in."""

    def __init__(self, logprobs: bool = True):
        self.version, self.calls, self.threads, self.logprobs = 0, [], set(), logprobs

    def generate(self, prompts, sampling):
        self.calls.append(list(prompts))
        self.threads.add(threading.current_thread().name)
        text = lambda p, i: f"{p}|seed={sampling.seed}|v={self.version}|{i}"
        return [[Completion(text(p, i), [1, 2], True, [-0.5, -0.25] if self.logprobs else None)
                 for i in range(sampling.n)] for p in prompts]


def overlapped(engine: FakeEngine, k: int, **kwargs) -> OverlappedRollout:
    """refresh(model) here receives the new version number as the 'model'."""
    return OverlappedRollout(engine, refresh=lambda version: setattr(engine, "version", version), max_staleness=k,
                             **kwargs)


def training_calls(rollout: OverlappedRollout, calls: range, version: int = 0) -> tuple[list[tuple[str, str]], int]:
    """What GRPO's training calls do: submit the call's batch, train on the oldest ready one, refresh the sampler
    with the next version. Returns ((trained prompt, its first sample's text) per training call, the last version)."""
    trained = []
    for i in calls:
        rollout.submit({"prompt": [f"p{i}"]}, [f"p{i}"], SAMPLING, version=version, seed=100 + i)
        job = rollout.take()
        if job is None:
            continue
        assert version - job.version <= rollout.max_staleness
        trained.append((job.prompts[0], rollout.generate(job.prompts, SAMPLING)[0][0].text))
        version += 1
        rollout.update_weights(version)
    return trained, version


@pytest.mark.parametrize("k", [1, 2])
def test_each_batch_is_trained_k_calls_late_with_weights_k_versions_old(k):
    engine = FakeEngine()
    rollout = overlapped(engine, k)
    trained, version = training_calls(rollout, range(6))
    # the first k calls only submit; call i trains batch i - k, which the worker sampled during call i - k, with
    # the weights of the max(0, i - 2k) rollouts trained before that call
    assert trained == [(f"p{i - k}", f"p{i - k}|seed={100 + i - k}|v={max(0, i - 2 * k)}|0") for i in range(k, 6)]
    assert version == 6 - k
    assert engine.threads == {"rollout_0"}                       # sampled in the worker thread only
    assert [job.prompts for job in rollout.pending] == [[f"p{i}"] for i in range(6 - k, 6)]   # still in flight
    rollout.close()


def test_other_prompts_are_sampled_at_once_and_a_wrong_batch_is_refused():
    engine = FakeEngine()
    rollout = overlapped(engine, 1)
    assert rollout.generate(["val"], SAMPLING)[0][0].text == "val|seed=0|v=0|0"   # validation: sampled now
    rollout.submit({"prompt": ["a"]}, ["a"], SAMPLING, version=0, seed=1)
    rollout.submit({"prompt": ["b"]}, ["b"], SAMPLING, version=0, seed=2)
    assert rollout.take().prompts == ["a"]
    with pytest.raises(RuntimeError, match="not those of the batch taken"):
        rollout.generate(["b"], SAMPLING)
    with pytest.raises(ValueError, match="max_staleness >= 1"):
        overlapped(engine, 0)
    rollout.close()


def test_missing_sampler_logprobs_are_computed_by_the_sampler_or_refused():
    rollout = overlapped(FakeEngine(logprobs=False), 1,
                         behaviour_logprobs=lambda sampler, prompts, flat: [[float(len(p))] * 2 for p in prompts])
    assert [c.logprobs for c in rollout.generate(["ab", "c"], SAMPLING)[1]] == [[1.0, 1.0], [1.0, 1.0]]
    with pytest.raises(ValueError, match="no log-probs"):
        overlapped(FakeEngine(logprobs=False), 1).generate(["a"], SAMPLING)
    rollout.close()


def test_checkpoint_holds_the_in_flight_batches_with_their_samples():
    """Stopped after call 3 and resumed: the in-flight batch comes back from the state with the samples the worker
    drew (nothing sampled again), and the rest trains exactly as without the stop."""
    whole, _ = training_calls(overlapped(FakeEngine(), 1), range(6))
    engine = FakeEngine()
    first = overlapped(engine, 1)
    before, version = training_calls(first, range(4))
    state = torch.load(_saved(first.state_dict()), weights_only=True)   # plain values, as Lightning reloads them
    resumed_engine = FakeEngine()
    resumed_engine.version = engine.version                           # the checkpoint's weights
    resumed = overlapped(resumed_engine, 1)
    resumed.load_state_dict(state)
    after, _ = training_calls(resumed, range(4, 6), version)
    assert before + after == whole
    assert resumed_engine.calls == [["p4"], ["p5"]]                   # p3's samples came from the checkpoint
    with pytest.raises(RuntimeError, match="already queued"):
        resumed.load_state_dict(state)


def _saved(state: dict):
    import io
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return buffer


# ---- on the tiny model ---------------------------------------------------------------------------------------------
STEPS = 6
TINY = ["experiment=r1_zero", "rollout=hf", "data.batch_size=2", "data.val_limit=2", "data.val_batch_size=2",
        "module.sampling.n=2", "module.sampling.max_new_tokens=8", "logger=csv", "trainer.log_every_n_steps=1",
        "trainer.deterministic=true", "trainer.limit_val_batches=0", f"trainer.max_steps={STEPS}",
        f"trainer.val_check_interval={STEPS}", "callbacks.model_checkpoint.every_n_train_steps=1",
        "callbacks.model_checkpoint.save_top_k=-1", "module.optimizer.lr=1e-2",
        # the random tiny model earns no accuracy or format reward: a length reward gives advantages
        "+module.rewards.length.weight=1.0", f"+module.rewards.length.fn._target_={__name__}.length_reward",
        "+module.rewards.length.fn._partial_=true"]


def length_reward(completions: list, **_) -> list[float]:
    """Characters / 100: a reward that differs between a random model's completions."""
    return [len(c) / 100 for c in completions]

# The trained-prompt ledger: every rollout GRPO trains appends {"step": optimiser steps so far, "ids": row ids}.
LEDGER_PATCH = """
import json, os
import r1lab.stages.grpo as grpo
_rollout = grpo.GRPOModule._rollout
def _ledgered(self, batch):
    with open(os.environ["R1LAB_LEDGER"], "a") as f:
        f.write(json.dumps({"step": self.global_step, "ids": list(batch["id"])}) + "\\n")
        f.flush()
        os.fsync(f.fileno())
    return _rollout(self, batch)
grpo.GRPOModule._rollout = _ledgered
"""
KILLED_SCRIPT = LEDGER_PATCH + """
import sys, time
from omegaconf import OmegaConf
import r1lab.infra.resume as resume
from r1lab.train import train
start = resume.ExactResume.on_train_batch_start
def slow(self, *args):  # a little slower per step, so that the kill lands while it trains
    time.sleep(0.3)
    start(self, *args)
resume.ExactResume.on_train_batch_start = slow
train(OmegaConf.load(sys.argv[1]))
"""


def tiny_config(compose_train, run_dir, *overrides):
    from omegaconf import OmegaConf, open_dict

    cfg = compose_train(*TINY, *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(run_dir)
        del cfg["hydra"]
    return OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))


def ledgered_train(cfg, ledger, monkeypatch) -> list[dict]:
    """Train in this process with the ledger on; returns its entries."""
    from r1lab.train import train

    monkeypatch.setenv("R1LAB_LEDGER", str(ledger))
    namespace = {}
    with monkeypatch.context() as patch:
        import r1lab.stages.grpo as grpo
        patch.setattr(grpo.GRPOModule, "_rollout", grpo.GRPOModule._rollout)  # undone after this run
        exec(LEDGER_PATCH, namespace)
        train(cfg)
    return [json.loads(line) for line in ledger.read_text().splitlines()]


def metrics(run_dir, name: str) -> dict[int, float]:
    import csv

    with open(run_dir / "csv" / "metrics.csv") as f:
        return {int(r["step"]): float(r[name]) for r in csv.DictReader(f) if r.get(name)}


def final_weights(run_dir) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]


def test_max_staleness_zero_is_synchronous_grpo_bit_for_bit(compose_train, tmp_path):
    from r1lab.train import train

    train(tiny_config(compose_train, tmp_path / "absent", f"trainer.max_steps={2}"))
    train(tiny_config(compose_train, tmp_path / "zero", f"trainer.max_steps={2}", "module.max_staleness=0"))
    a, b = final_weights(tmp_path / "absent"), final_weights(tmp_path / "zero")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert metrics(tmp_path / "absent", "train/loss") == metrics(tmp_path / "zero", "train/loss")


def test_one_step_off_policy_trains_each_batch_one_version_late(compose_train, tmp_path, monkeypatch):
    """The loader's batches are trained in order, each one call late; from the second update on each was sampled
    by the previous version's weights, so the ratio's old log-probs (the sampler's) differ from the policy's."""
    sync = ledgered_train(tiny_config(compose_train, tmp_path / "sync"), tmp_path / "sync.jsonl", monkeypatch)
    run = tmp_path / "off"
    off = ledgered_train(tiny_config(compose_train, run, "module.max_staleness=1"), tmp_path / "off.jsonl",
                         monkeypatch)
    assert [e["ids"] for e in off] == [e["ids"] for e in sync]            # the same batches, in the same order
    assert [e["step"] for e in off] == list(range(STEPS))
    staleness, ratio = metrics(run, "train/staleness"), metrics(run, "train/ratio_mean")
    assert list(staleness.values()) == [0.0] + [1.0] * (STEPS - 1)
    assert all(abs(r - 1) > 1e-7 for step, r in ratio.items() if staleness[step] == 1.0)
    assert all(r == 1.0 for r in metrics(tmp_path / "sync", "train/ratio_mean").values())


def kill_at_a_random_point(cfg, tmp_path, ledger, sigkill) -> int:
    """Run `cfg` in a subprocess with the ledger on and SIGKILL it at a random moment after its checkpoint of a
    random step (mid-step, or between steps while the worker samples); returns that step."""
    import os
    import random
    import subprocess
    import sys
    from pathlib import Path

    from omegaconf import OmegaConf

    step = random.randint(2, STEPS - 2)
    OmegaConf.save(cfg, tmp_path / "killed.yaml")
    ckpt_dir = Path(cfg.callbacks.model_checkpoint.dirpath)
    env = os.environ | {"PYTHONHASHSEED": "0", "R1LAB_LEDGER": str(ledger),
                        "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_SCRIPT, str(tmp_path / "killed.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    sigkill(proc, ckpt_dir / f"step_{step:06d}.ckpt", timeout_s=180, delay_s=random.uniform(0.0, 0.5))
    assert not (ckpt_dir / f"step_{STEPS:06d}.ckpt").exists(), "killed too late: the run had finished"
    return step


def test_killed_and_resumed_off_policy_run_trains_every_prompt_exactly_once(compose_train, tmp_path, monkeypatch,
                                                                              sigkill):
    """One-step-off GRPO killed at a random point and resumed from its last checkpoint: the steps the checkpoint
    holds plus those the resumed run trains are the uninterrupted run's batches, each prompt once, and the final
    weights are the uninterrupted run's bit for bit (the in-flight batch's samples came back from the checkpoint)."""
    whole = ledgered_train(tiny_config(compose_train, tmp_path / "whole", "module.max_staleness=1"),
                           tmp_path / "whole.jsonl", monkeypatch)
    killed_cfg = tiny_config(compose_train, tmp_path / "killed", "module.max_staleness=1")
    killed_at = kill_at_a_random_point(killed_cfg, tmp_path, tmp_path / "killed.jsonl", sigkill)
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=False)
    resumed_from = saved["global_step"]
    assert killed_at <= resumed_from < STEPS and len(saved["overlap"]["pending"]) == 1   # one batch in flight
    killed = [e for e in map(json.loads, (tmp_path / "killed.jsonl").read_text().splitlines())
              if e["step"] < resumed_from]                                      # what the checkpoint holds
    resumed = ledgered_train(tiny_config(compose_train, tmp_path / "resumed", "module.max_staleness=1",
                                         f"ckpt_path={last}"), tmp_path / "resumed.jsonl", monkeypatch)

    lineage = killed + resumed
    assert [e["step"] for e in lineage] == list(range(STEPS))                   # every step once, none twice
    ids = [i for e in lineage for i in e["ids"]]
    assert len(ids) == len(set(ids)) == STEPS * 2                               # no prompt trained twice
    assert [e["ids"] for e in lineage] == [e["ids"] for e in whole]             # none skipped: the same batches
    train_weights, resumed_weights = final_weights(tmp_path / "whole"), final_weights(tmp_path / "resumed")
    differ = [k for k in train_weights if not torch.equal(train_weights[k], resumed_weights[k])]
    assert not differ, f"killed after step {killed_at}, resumed from {resumed_from}: weights differ in {differ[:5]}"


def test_one_step_off_policy_on_vllm(compose_train, tmp_path):
    """vLLM holds its own weights: it samples in the worker thread, its log-probs are the behaviour policy's."""
    from r1lab.train import train

    run = tmp_path / "vllm"
    train(tiny_config(compose_train, run, "rollout=vllm", "trainer.max_steps=3", "module.max_staleness=1"))
    assert list(metrics(run, "train/staleness").values()) == [0.0, 1.0, 1.0]
    assert all(abs(r - 1) > 1e-7 for r in list(metrics(run, "train/ratio_mean").values())[1:])
