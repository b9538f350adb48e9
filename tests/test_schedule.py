"""The local pipeline's schedule (r1lab.pipeline.run_local) with fake stages: each blocks until the test releases it,
so which stages run side by side, and with how many threads, is checked step by step without real runs."""

import os
import queue
import threading
from collections import defaultdict
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import r1lab.pipeline
from r1lab.pipeline import Lineage, Stage, run_local


def reads(*names: str) -> dict[str, str]:
    return {f"in{i}": f"${{stage:{name}}}/model" for i, name in enumerate(names)}


# A miniature demo: a main chain (a -> b), a student branch (s), a stage reading both (d), evaluations of a, s, d.
STAGES = [Stage("build", "build"), Stage("a", "train"), Stage("b", "train", reads=reads("a")),
          Stage("s", "train"), Stage("d", "train", reads=reads("b", "s")),
          *(Stage(f"eval_{m}", "eval", reads={"model_dir": f"${{stage:{m}}}/model"}) for m in ("a", "s", "d"))]


class FakeStages:
    """Stands in for `run_stage`: reports (stage, OMP_NUM_THREADS) when a stage starts, then waits for the test to
    release it (all at once with `auto`); writes the stage's outputs, or fails like a real stage for `fail`."""

    def __init__(self, auto: bool = False, fail: tuple[str, ...] = ()):
        self.started: queue.Queue = queue.Queue()
        self.release: defaultdict[str, threading.Event] = defaultdict(threading.Event)
        self.auto, self.fail = auto, set(fail)

    def __call__(self, stage, stage_dir: Path, cmd, env, board=None, head=None) -> float:
        self.started.put((stage.name, env.get("OMP_NUM_THREADS")))
        assert self.auto or self.release[stage.name].wait(30), f"{stage.name} never released"
        if stage.name in self.fail:
            raise RuntimeError(f"stage {stage.name!r} failed (exit 1); last lines of {stage_dir / 'stage.log'}:\n")
        for path in r1lab.pipeline.outputs(stage, stage_dir).values():
            Path(path).mkdir(parents=True, exist_ok=True)
        return 0.1

    def next_started(self, quiet_s: float = 0.3) -> dict[str, str | None]:
        """The stages started since the last call (stage -> threads), once `quiet_s` passes with no other start."""
        started = dict([self.started.get(timeout=30)])
        while True:
            try:
                started.update([self.started.get(timeout=quiet_s)])
            except queue.Empty:
                return started


@pytest.fixture
def pipeline(tmp_path, monkeypatch):
    """`start(jobs, fakes)` runs `run_local` on STAGES in a thread, on 4 cores, and returns (its lineage, `join`:
    wait for it, then its {"ran": ...} or {"error": ...})."""
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(r1lab.pipeline, "git_revision", lambda: "abc")

    def start(jobs: int, fakes: FakeStages):
        monkeypatch.setattr(r1lab.pipeline, "run_stage", fakes)
        cfg = OmegaConf.create({"paths": {}, "pipeline": {"jobs": jobs, "run_args": {}, "overrides": {}}})
        lineage, result = Lineage(tmp_path / "lineage.json", "fake"), {}

        def target():
            try:
                result["ran"] = run_local(cfg, STAGES, tmp_path, lineage)
            except Exception as error:   # handed to the test
                result["error"] = error

        thread = threading.Thread(target=target, daemon=True)
        thread.start()

        def join() -> dict:
            thread.join(30)
            assert not thread.is_alive(), "run_local did not return"
            return result
        return lineage, join
    return start


def test_jobs_2_runs_the_student_branch_beside_the_main_chain_and_each_evaluation_after_its_model(pipeline):
    fakes = FakeStages()
    lineage, join = pipeline(2, fakes)
    assert fakes.next_started() == {"build": None}                  # alone: the environment's threads, every core
    steps = [("build", {"a": "2", "s": "2"}),                       # the student branch beside the main chain
             ("s", {"eval_s": "2"}),                                # its evaluation as soon as it is trained
             ("a", {"b": "2"}),                                     # one slot: the main chain first, not eval_a
             ("eval_s", {"eval_a": "2"}),
             ("b", {"d": "2"}),
             ("d", {"eval_d": "2"})]                                # beside eval_a
    for done, starts in steps:
        fakes.release[done].set()
        assert fakes.next_started() == starts, f"after {done}"
    fakes.release["eval_a"].set()
    assert fakes.started.empty()
    fakes.release["eval_d"].set()
    assert join() == {"ran": True}
    assert fakes.started.empty()
    assert all(lineage.data["stages"][s.name]["status"] == "done" for s in STAGES)
    assert lineage.data["jobs"] == 2 and lineage.data["wall_s"] >= 0


def test_jobs_1_runs_the_plan_in_order_on_every_core(pipeline):
    fakes = FakeStages(auto=True)
    _, join = pipeline(1, fakes)
    assert join() == {"ran": True}
    order = [fakes.started.get_nowait() for _ in STAGES]
    assert order == [(s.name, None) for s in STAGES]


def test_a_failed_stage_stops_its_dependents_and_is_raised_after_the_others_finish(pipeline, capsys):
    fakes = FakeStages(auto=True, fail=("a",))
    lineage, join = pipeline(2, fakes)
    error = join()["error"]
    assert isinstance(error, RuntimeError) and str(error).startswith("stage 'a' failed (exit 1)")
    started = {fakes.started.get_nowait()[0] for _ in range(fakes.started.qsize())}
    assert started == {"build", "a", "s", "eval_s"}                 # not b, d, eval_a, eval_d
    stages = lineage.data["stages"]
    assert stages["a"]["status"] == "running" and stages["eval_s"]["status"] == "done" and "b" not in stages
    printed = capsys.readouterr().out
    assert "b                          not run: a failed" in printed
    assert "a                          failed: stage 'a' failed (exit 1); last lines of" in printed


def test_a_rerun_skips_finished_stages_and_starts_what_they_unblock(pipeline, tmp_path, capsys):
    first = Lineage(tmp_path / "lineage.json", "fake")
    for stage in STAGES[:2]:                                        # build and a finished before
        first.record(stage.name, status="done", wall_s=60.0)
        (tmp_path / stage.name / "model").mkdir(parents=True)
    fakes = FakeStages()
    lineage, join = pipeline(2, fakes)
    assert fakes.next_started() == {"b": "2", "s": "2"}
    for name in ("b", "s", "eval_a", "eval_s", "d", "eval_d"):
        fakes.release[name].set()
    assert join() == {"ran": True}
    assert "a                          done before, skipped" in capsys.readouterr().out
    assert lineage.data["wall_s"] >= 120.0                          # the first run's time (its stages') and this one's
