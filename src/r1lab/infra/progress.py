"""Live progress: a run says how far it is, the pipeline shows it (issue 27, "Nobody stares at a silent terminal").

- `Progress`: counts steps (or prompts) done out of a total and, at most every `every_s` seconds and at the end, writes
  `progress.json` ({"unit", "step", "total", "elapsed_s", "remaining_s", "metric", "value", "updated"}, atomically)
  and optionally prints one line: `[pretrain] step 250/1000  2.1 min elapsed  ~6.3 min left  train/loss 2.314`.
- `r1lab.infra.callbacks.ProgressLine` does so for a training run (configs/callbacks/progress.yaml); r1lab.sample
  and r1lab.eval use `Progress` directly, counting prompts, and so never import Lightning.
- `Board`: the pipeline's terminal. While a stage's process runs, it reads `<stage_dir>/progress.json` every `poll_s`
  and shows it on the stage's line: rewritten in place on a terminal running one stage, else as full lines at most
  every `every_s` seconds and only when changed; lines of concurrent stages (threads) never mix.
Simplified: time left is a straight line through the rate since the first step (validation pauses included).
"""

import json
import math
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TextIO

from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from r1lab.infra.atomic import write_atomic

FILE = "progress.json"


def rate(done: float, first_done: float, seconds: float) -> float | None:
    """Units per second since the first report (`first_done` units, `seconds` ago); None before any progress.

    >>> rate(250, 10, 120.0), rate(10, 10, 5.0), rate(12, 10, 0.0)
    (2.0, None, None)
    """
    if seconds <= 0 or done <= first_done:
        return None
    return (done - first_done) / seconds


def remaining_s(done: float, total: float | None, per_s: float | None) -> float | None:
    """Seconds left at `per_s` units a second; None without a total or a rate.

    >>> remaining_s(250, 1000, 2.0), remaining_s(1000, 1000, 2.0), remaining_s(250, None, 2.0)
    (375.0, 0.0, None)
    """
    if total is None or not per_s:
        return None
    return max(total - done, 0) / per_s


def total_steps(max_steps: int, estimated: float | None) -> int | None:
    """The run's optimiser steps: `trainer.max_steps` when set, else Lightning's estimate when finite.

    >>> total_steps(1000, 5.0), total_steps(-1, 40.0), total_steps(-1, float("inf")), total_steps(-1, None)
    (1000, 40, None, None)
    """
    if max_steps and max_steps > 0:
        return max_steps
    return int(estimated) if estimated is not None and math.isfinite(estimated) else None


def first_metric(metrics: dict, names: list[str]) -> tuple[str | None, float | None]:
    """The first of `names` present in `metrics` (e.g. `trainer.callback_metrics`), as (name, float value).

    >>> first_metric({"train/loss": 2.5, "val/loss": 2.0}, ["train/reward_mean", "train/loss"])
    ('train/loss', 2.5)
    >>> first_metric({}, ["train/loss"])
    (None, None)
    """
    name = next((n for n in names if n in metrics), None)
    return (name, float(metrics[name])) if name else (None, None)


def progress_line(record: dict, task: str | None = None) -> str:
    """One line from a progress record (what `progress.json` holds), led by `[task]` when given.

    >>> progress_line({"unit": "step", "step": 250, "total": 1000, "elapsed_s": 126.0, "remaining_s": 378.0,
    ...                "metric": "train/loss", "value": 2.3141}, "pretrain")
    '[pretrain] step 250/1000  2.1 min elapsed  ~6.3 min left  train/loss 2.314'
    >>> progress_line({"unit": "prompt", "step": 3, "total": None, "elapsed_s": 5.0, "remaining_s": None})
    'prompt 3  0.1 min elapsed'
    """
    total = record.get("total")
    parts = [f"{record.get('unit', 'step')} {record['step']}{f'/{total}' if total is not None else ''}",
             f"{record['elapsed_s'] / 60:.1f} min elapsed"]
    if record.get("remaining_s") is not None:
        parts.append(f"~{record['remaining_s'] / 60:.1f} min left")
    if record.get("metric") is not None and record.get("value") is not None:
        parts.append(f"{record['metric']} {record['value']:.4g}")
    return ("" if task is None else f"[{task}] ") + "  ".join(parts)


def read_progress(path: Path) -> dict | None:
    """The record in `path`, or None when there is none yet (written atomically, so never half a file)."""
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def hydra_run_file(name: str = FILE) -> Path | None:
    """`<the Hydra run's output dir>/name`, where the pipeline looks; None outside a Hydra app (a `run(cfg)` call)."""
    if not HydraConfig.initialized():
        return None
    out = OmegaConf.select(HydraConfig.get(), "runtime.output_dir", default=None)
    return Path(out) / name if out else None


class Progress:
    """`done` units of `total` (None: unknown): `update` reports at most every `every_s` seconds, and always with
    `final=True`, to `path` (None: no file) and, with `echo`, as a printed line."""

    def __init__(self, task: str, total: int | None, path: Path | None = None, unit: str = "step",
                 every_s: float = 10.0, echo: bool = True, clock: Callable[[], float] = time.monotonic):
        self.task, self.total, self.path, self.unit, self.every_s, self.echo = task, total, path, unit, every_s, echo
        self.clock, self.start, self.done = clock, clock(), 0
        self.first: tuple[float, int] | None = None   # (time, done) of the first update: the rate counts from there
        self.last = -math.inf

    def update(self, done: int, metric: str | None = None, value: float | None = None,
               final: bool = False) -> dict | None:
        """Record `done`; returns the record when it was reported."""
        now, self.done = self.clock(), done
        self.first = self.first or (now, done)
        if not final and now - self.last < self.every_s:
            return None
        self.last = now
        left = remaining_s(done, self.total, rate(done, self.first[1], now - self.first[0]))
        record = {"unit": self.unit, "step": done, "total": self.total, "elapsed_s": round(now - self.start, 1),
                  "remaining_s": 0.0 if final else None if left is None else round(left, 1), "metric": metric,
                  "value": value, "updated": time.strftime("%Y-%m-%d %H:%M:%S")}
        if self.path is not None:
            write_atomic(self.path, (json.dumps(record) + "\n").encode())
        if self.echo:
            print(progress_line(record, self.task), flush=True)
        return record


class Board:
    """The pipeline's stage lines on `stream` (default stdout), written whole and under a lock (stages run in
    threads). `watch` shows a running stage's `progress.json` on its line: in place on a terminal (`tty`) while it
    is the only stage running, else as a full line at most every `every_s` seconds when the record changed."""

    def __init__(self, stream: TextIO | None = None, tty: bool | None = None, poll_s: float = 2.0,
                 every_s: float = 10.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.poll_s, self.every_s = poll_s, every_s
        self.lock = threading.Lock()
        self.live: dict[str, float] = {}                        # stage line -> its start
        self.printed: dict[str, tuple[float, dict]] = {}        # stage line -> (when, record) last printed
        self.drawn = False                                      # a line is drawn in place, without its newline

    def _write(self, text: str, newline: bool = True) -> None:
        clear = "\r\x1b[2K" if self.drawn else ""
        self.stream.write(clear + text + ("\n" if newline else ""))
        self.stream.flush()
        self.drawn = not newline

    def line(self, text: str) -> None:
        """A full line (clearing a line drawn in place)."""
        with self.lock:
            self._write(text)

    def show(self, key: str, record: dict | None) -> None:
        """Stage `key`'s progress `record` (None: none written yet)."""
        now = time.monotonic()
        with self.lock:
            if self.tty and len(self.live) == 1:
                text = progress_line(record) if record else f"running {(now - self.live[key]) / 60:.1f} min"
                width = shutil.get_terminal_size().columns - 1   # a wrapped line cannot be redrawn in place
                self._write(f"{key.rstrip()} {text}"[:width], newline=False)
                return
            when, last = self.printed.get(key, (-math.inf, None))
            if record and record != last and now - when >= self.every_s:
                self.printed[key] = (now, record)
                self._write(f"{key} {progress_line(record)}")

    @contextmanager
    def running(self, key: str) -> Iterator[None]:
        with self.lock:
            self.live[key] = time.monotonic()
        try:
            yield
        finally:
            with self.lock:
                del self.live[key]
                self.printed.pop(key, None)
                if self.drawn:
                    self._write("", newline=False)   # clears the line drawn in place
                    self.drawn = False

    def watch(self, proc: subprocess.Popen, path: Path, key: str) -> int:
        """Wait for `proc`, showing `path` on line `key` every `poll_s` seconds; returns its exit code."""
        with self.running(key):
            while True:
                try:
                    return proc.wait(timeout=self.poll_s)
                except subprocess.TimeoutExpired:
                    self.show(key, read_progress(path))
