"""Rollouts that overlap training: k-step off-policy GRPO (`module.max_staleness=k`, k >= 1).

Lightning hands GRPO one batch per call, so overlap is a delay line: each call submits its batch to a background
worker, which samples it with the sampler's weights, and trains on the oldest submitted batch once more than k are
in flight (the first k calls only submit, so they take no optimiser step). Versions count the rollouts trained so
far: a batch submitted at version v is sampled with the weights of version v and trained at version v + k, so its
staleness is exactly k after the first k calls (`staleness` checks the bound).

`OverlappedRollout` stands in for the rollout engine: `submit` queues a batch, `take` readies the oldest one (waiting
for its samples), and the next `generate` returns those samples; any other `generate` (validation, extra sampling
rounds) samples at once with the sampler, whose weights are then the policy's. `update_weights` (GRPO calls it after
each update) first waits for the worker, then refreshes the sampler: so the worker runs only inside a training call,
alongside that call's forward and backward passes, and is idle whenever Lightning saves a checkpoint, validates or
fetches data (the global RNG, which HF sampling seeds, is then never shared by two threads).

Each sample carries the sampler's log-probs of its tokens (`Completion.logprobs`: the engine's own, else computed
by `behaviour_logprobs` with the sampler's model): the behaviour policy the importance ratio divides by.
The checkpoint holds the submitted-but-untrained batches with their samples (`state_dict`), alongside the loader's
position, so a resumed run trains on every prompt exactly once and samples as the uninterrupted run did.

Usage: `OverlappedRollout(HFRollout(sampler_model, tok), refresh=..., max_staleness=1)`; GRPOModule builds it.
"""

from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace

from r1lab.rollout.engine import Completion, RolloutEngine, SamplingConfig


def staleness(current_version: int, rollout_version: int, max_staleness: int) -> int:
    """Versions between the policy being trained and the one that sampled the rollout, checked against the bound.

    >>> staleness(5, 4, max_staleness=1), staleness(0, 0, max_staleness=1)
    (1, 0)
    >>> staleness(5, 3, max_staleness=1)
    Traceback (most recent call last):
    ...
    ValueError: rollout of version 3 trained at version 5: staleness 2 > max_staleness 1
    """
    gap = current_version - rollout_version
    if not 0 <= gap <= max_staleness:
        raise ValueError(f"rollout of version {rollout_version} trained at version {current_version}: "
                         f"staleness {gap} > max_staleness {max_staleness}")
    return gap


def rollout_seed(base_seed: int, index: int, world_size: int = 1, rank: int = 0) -> int:
    """The sampling seed of the `index`-th batch submitted on `rank`, fixed at submission (as synchronous GRPO's
    seed + step x world size + rank, with the submission index for the step).

    >>> rollout_seed(7, 3, world_size=2, rank=1)
    14
    """
    return base_seed + index * world_size + rank


@dataclass
class Pending:
    """One submitted batch: the loader's columns, its rendered prompts, the policy version and seed it is sampled
    with, and its samples ([prompts][n], each with the sampler's log-probs) once the worker is done."""

    batch: dict[str, list]
    prompts: list[str]
    version: int
    seed: int
    future: Future | None = None
    completions: list[list[Completion]] | None = None

    def result(self) -> list[list[Completion]]:
        if self.completions is None:
            self.completions = self.future.result()  # re-raises the worker's error in the training thread
        return self.completions


class OverlappedRollout:
    """A rollout engine that samples submitted batches in a background thread with its own weights (see module doc).

    sampler: an engine holding its own copy of the weights (HFRollout on a copy of the model, or VLLMRollout).
    refresh(model): copies the policy's weights into the sampler. behaviour_logprobs(sampler, prompts, completions):
    the log-probs of the sampled tokens under the sampler, for engines that return none ([N][tokens]).
    """

    uses_training_weights = False  # GRPO gathers ZeRO-3 weights only for an engine that samples with the policy

    def __init__(self, sampler: RolloutEngine, refresh: Callable, max_staleness: int,
                 behaviour_logprobs: Callable | None = None):
        if max_staleness < 1:
            raise ValueError(f"OverlappedRollout needs max_staleness >= 1 (0 is synchronous GRPO), got {max_staleness}")
        self.sampler, self.refresh, self.max_staleness = sampler, refresh, max_staleness
        self.behaviour_logprobs = behaviour_logprobs
        self.pending: deque[Pending] = deque()
        self.ready: Pending | None = None
        self.submitted = 0        # batches submitted since the run started (seeds follow it)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")

    def _sample(self, prompts: list[str], sampling: SamplingConfig) -> list[list[Completion]]:
        groups = self.sampler.generate(prompts, sampling)
        flat = [c for group in groups for c in group]
        if flat and any(c.logprobs is None for c in flat):
            if self.behaviour_logprobs is None:
                raise ValueError("the sampler returns no log-probs and no behaviour_logprobs was given: the importance "
                                 "ratio of an off-policy rollout needs the sampler's (rollout.logprobs=true for vLLM)")
            logprobs = iter(self.behaviour_logprobs(self.sampler, [p for p, g in zip(prompts, groups) for _ in g], flat))
            groups = [[replace(c, logprobs=next(logprobs)) for c in group] for group in groups]
        return groups

    def submit(self, batch: dict[str, list], prompts: list[str], sampling: SamplingConfig, version: int,
               seed: int) -> None:
        """Queue a batch: the worker samples it now with the sampler's weights (those of `version`)."""
        job = Pending(batch, prompts, version, seed)
        job.future = self._worker.submit(self._sample, prompts, replace(sampling, seed=seed))
        self.pending.append(job)
        self.submitted += 1

    def take(self) -> Pending | None:
        """The oldest batch, sampled and ready for the next `generate`, once more than `max_staleness` are queued;
        else None, once the worker is done (it never runs between training calls)."""
        if len(self.pending) <= self.max_staleness:
            self.wait()
            return None
        self.ready = self.pending.popleft()
        self.ready.result()
        return self.ready

    def generate(self, prompts: list[str], sampling: SamplingConfig,
                 done: Callable[[int], None] | None = None) -> list[list[Completion]]:
        """The ready batch's samples (the prompts must be its own), else samples drawn now with the sampler; `done`
        hears of all the prompts at once."""
        if self.ready is None:
            self.wait()
            groups = self._sample(prompts, sampling)
        else:
            ready, self.ready = self.ready, None
            if ready.prompts != prompts:
                raise RuntimeError("OverlappedRollout: the prompts to sample are not those of the batch taken for "
                                   f"training (first: {prompts[:1]!r} vs {ready.prompts[:1]!r})")
            groups = ready.result()
        if done:
            done(len(groups))
        return groups

    def wait(self) -> None:
        """Block until the worker has sampled everything submitted."""
        for job in self.pending:
            job.result()

    def update_weights(self, model) -> None:
        """Once the worker is idle, give the sampler the policy's current weights (the next version's)."""
        self.wait()
        self.refresh(model)

    def close(self) -> None:
        self._worker.shutdown(wait=True)

    # ---- checkpoint: the batches submitted but not trained, with their samples ---------------------------------
    def state_dict(self) -> dict:
        """Plain values only (checkpoints load with weights_only=True): waits for the worker first."""
        self.wait()
        return {"submitted": self.submitted,
                "pending": [{"batch": job.batch, "prompts": job.prompts, "version": job.version, "seed": job.seed,
                             "completions": [[asdict(c) for c in group] for group in job.result()]}
                            for job in self.pending]}

    def load_state_dict(self, state: dict) -> None:
        if self.pending or self.ready is not None:
            raise RuntimeError("OverlappedRollout.load_state_dict: batches are already queued")
        self.submitted = state["submitted"]
        for job in state["pending"]:
            completions = [[Completion(**c) for c in group] for group in job["completions"]]
            self.pending.append(Pending(job["batch"], job["prompts"], job["version"], job["seed"],
                                        completions=completions))
