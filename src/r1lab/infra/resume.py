"""Exact resume: a checkpoint continues the run as if it had never stopped.

Lightning's checkpoint already holds the weights (the GRPO reference model too: it is a submodule), the optimiser and
scheduler states and the loop counters. This module adds the rest:

- `ResumableDataLoader`: a `DataLoader` whose `state_dict()` records the training data's position (the sampler
  generators' states at the start of the epoch and the number of batches consumed); Lightning saves it in the
  checkpoint (`fit_loop` "combined_loader" state) and loads it into the new loader before iterating, which then
  replays the epoch's order and skips the consumed batches (index lists only: no rows are loaded for them).
- `ExactResume`: a callback that keeps each loader's consumed count current and saves the global RNG states (python,
  numpy, torch, CUDA), restoring them just before the first batch after a resume.

What needs no state: GRPO's rollout seeds (`seed + global_step * world_size + rank`, the HF and vLLM engines are
seeded per call from it), reward schedules (`weighted_rewards(..., step=global_step)`), the learning-rate schedule
(the scheduler's state is in the checkpoint).
"""

import itertools
import random

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler


def _generators(sampler) -> list:
    """The random generators a (batch) sampler draws its order from: its own and its inner sampler's, in order."""
    found, seen = [], set()
    for obj in (sampler, getattr(sampler, "sampler", None)):
        if obj is None:
            continue
        for name in sorted(vars(obj)):
            value = getattr(obj, name)
            if isinstance(value, (torch.Generator, random.Random, np.random.Generator, np.random.RandomState)) \
                    and id(value) not in seen:
                seen.add(id(value))
                found.append(value)
    return found


def _np_legacy_state(rs: np.random.RandomState | None = None) -> list:
    """numpy's legacy RNG state as plain Python values (checkpoints load with torch.load(weights_only=True))."""
    name, keys, pos, has_gauss, gauss = (rs or np.random).get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(gauss)]


def _np_legacy_tuple(state: list) -> tuple:
    name, keys, pos, has_gauss, gauss = state
    return name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss


def _get_state(gen):
    if isinstance(gen, torch.Generator):
        return gen.get_state()
    if isinstance(gen, random.Random):
        return gen.getstate()
    if isinstance(gen, np.random.Generator):
        return gen.bit_generator.state
    return _np_legacy_state(gen)


def _set_state(gen, state) -> None:
    if isinstance(gen, torch.Generator):
        gen.set_state(state)
    elif isinstance(gen, random.Random):
        gen.setstate(state)
    elif isinstance(gen, np.random.Generator):
        gen.bit_generator.state = state
    else:
        gen.set_state(_np_legacy_tuple(state))


class _ResumingIndexSampler:
    """Iterates the loader's index sampler; restores its generators first when the loader was loaded from a state."""

    def __init__(self, base, loader: "ResumableDataLoader"):
        self.base, self.loader = base, loader

    def __len__(self) -> int:
        return len(self.base)

    def __iter__(self):
        loader, gens = self.loader, _generators(self.base)
        skip, pending, global_state, finished = 0, loader._pending, None, False
        if pending is not None:
            loader._pending = None
            if len(pending["start"]) != len(gens):
                raise RuntimeError(f"the checkpoint's data position has {len(pending['start'])} sampler generators, "
                                   f"this loader {len(gens)}: resume with the data config the run was started with")
            finished = pending["consumed"] >= pending["length"]
            for gen, state in zip(gens, pending["now"] if finished else pending["start"]):
                _set_state(gen, state)
            skip = 0 if finished else pending["consumed"]
            if loader._global_rng:
                global_state = loader._after_iter_global
        loader._epoch_start = [_get_state(g) for g in gens]
        loader.consumed = skip
        batches = iter(self.base)
        if loader._global_rng:  # the sampler draws its epoch's seed from torch's global RNG at its first batch
            saved = torch.get_rng_state()
            if global_state is not None:
                torch.set_rng_state(global_state)
            first = next(batches, None)
            if global_state is not None:
                if finished:  # the run continues after this epoch's draws: ExactResume restores this state
                    loader._global_after_resume = torch.get_rng_state()
                torch.set_rng_state(saved)
            if first is None:
                return
            batches = itertools.chain([first], batches)
        for i, indices in enumerate(batches):
            if i >= skip:
                yield indices


class ResumableDataLoader(DataLoader):
    """A `DataLoader` whose position in the epoch survives a checkpoint (see the module docstring).

    Same arguments as `DataLoader`, and the same batches in the same order. A shuffling `RandomSampler` without a
    generator draws each epoch's seed from torch's global RNG (so `seed_everything` decides the order): its state at
    the epoch's start is saved too, and set again just for drawing that seed on resume.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._global_rng = isinstance(self.sampler, RandomSampler) and self.sampler.generator is None
        self._epoch_start_global: torch.Tensor | None = None
        self._after_iter_global: torch.Tensor | None = None
        self._global_after_resume: torch.Tensor | None = None
        self.consumed = 0                   # batches of the current epoch trained on (kept current by ExactResume)
        self._epoch_start: list | None = None
        self._pending: dict | None = None

    def __iter__(self):
        if not self._global_rng:
            return super().__iter__()
        # creating the iterator draws from the global RNG too (its base seed): replay that draw on resume as well
        pending, saved = self._pending, torch.get_rng_state()
        if pending is not None:
            finished = pending["consumed"] >= pending["length"]
            torch.set_rng_state(pending["now_global"] if finished else pending["start_global"])
        self._epoch_start_global = torch.get_rng_state()
        iterator = super().__iter__()
        self._after_iter_global = torch.get_rng_state()
        if pending is not None:
            torch.set_rng_state(saved)
        return iterator

    @property
    def _index_sampler(self):
        return _ResumingIndexSampler(super()._index_sampler, self)

    def state_dict(self) -> dict:
        gens = _generators(super()._index_sampler)
        now = [_get_state(g) for g in gens]
        state = {"start": self._epoch_start if self._epoch_start is not None else now, "now": now,
                 "consumed": self.consumed, "length": len(self)}
        if self._global_rng:
            now_global = torch.get_rng_state()
            state |= {"now_global": now_global,
                      "start_global": now_global if self._epoch_start_global is None else self._epoch_start_global}
        return state

    def load_state_dict(self, state: dict) -> None:
        self._pending = state


def _resumable_loaders(trainer: L.Trainer) -> list[ResumableDataLoader]:
    combined = getattr(trainer.fit_loop, "_combined_loader", None)
    return [dl for dl in (combined.flattened if combined is not None else []) if isinstance(dl, ResumableDataLoader)]


def restore_rng(state: dict, loaders: list[ResumableDataLoader] = ()) -> None:
    """Set the global RNGs to a saved `ExactResume` state; where a loader resumed at an epoch's end and has already
    drawn the next epoch's seed from torch's RNG, torch's RNG continues after that draw, as in the unbroken run."""
    random.setstate(state["python"])
    np.random.set_state(_np_legacy_tuple(state["numpy"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    for loader in loaders:
        if loader._global_after_resume is not None:
            torch.set_rng_state(loader._global_after_resume)
            loader._global_after_resume = None


class ExactResume(L.Callback):
    """Save the global RNG states with each checkpoint and restore them before the first batch after a resume; keep
    the training loaders' consumed-batch counts current so that their saved position is the trained position."""

    def __init__(self):
        self._rng_to_restore: dict | None = None

    @property
    def state_key(self) -> str:
        return "ExactResume"

    def state_dict(self) -> dict:
        state = {"python": random.getstate(), "numpy": _np_legacy_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._rng_to_restore = state_dict

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch, batch_idx: int) -> None:
        if self._rng_to_restore is not None:
            state, self._rng_to_restore = self._rng_to_restore, None
            restore_rng(state, _resumable_loaders(trainer))
        for loader in _resumable_loaders(trainer):
            loader.consumed = batch_idx + 1  # this batch counts once its step has run: saves happen after it
