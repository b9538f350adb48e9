"""PromptStream: a seeded, resumable stream of extra training prompts, apart from the training dataloader.

GRPO's DAPO dynamic sampling (r1lab.maths.dynamic_sampling) draws more prompts when a step's groups have no reward
variance. It takes them from this stream over the training dataset, not from the dataloader, so the epoch's batches,
their order and the loader's saved position stay what they are without it. Each epoch is a permutation drawn from a
generator seeded by `seed + epoch`; rank r of W keeps every W-th index from the r-th, cut to len // W, so the ranks'
shares are disjoint and equal in length and, as every rank takes the same number of prompts, their positions stay
equal: the state {"epoch", "position"} (two ints, in the GRPO checkpoint) resumes every rank exactly.

    stream = PromptStream(rows, collate_columns, seed=0)
    batch = stream.take(16)     # {"prompt": [...16], "answer": [...], ...}, as the training loader's batches
"""

from collections.abc import Callable, Sequence

import torch


class PromptStream:
    """Batches of rows of `dataset` (any indexable dataset) in a seeded order, endlessly, collated by `collate_fn`.

    >>> stream = PromptStream(list(range(5)), list, seed=0, rank=1, world_size=2)
    >>> first = stream.take(3); stream.state_dict()
    {'epoch': 1, 'position': 1}
    >>> again = PromptStream(list(range(5)), list, seed=0, rank=1, world_size=2)
    >>> again.load_state_dict({"epoch": 0, "position": 0}); again.take(3) == first
    True
    """

    def __init__(self, dataset: Sequence, collate_fn: Callable[[list], dict], seed: int, rank: int = 0,
                 world_size: int = 1):
        if len(dataset) < world_size:
            raise ValueError(f"PromptStream: {len(dataset)} training rows cannot be shared by {world_size} ranks")
        self.dataset, self.collate_fn, self.seed = dataset, collate_fn, seed
        self.rank, self.world_size = rank, world_size
        self.epoch, self.position = 0, 0
        self._order: list[int] | None = None

    def _epoch_order(self) -> list[int]:
        """This rank's share of the current epoch's permutation."""
        if self._order is None:
            perm = torch.randperm(len(self.dataset), generator=torch.Generator().manual_seed(self.seed + self.epoch))
            self._order = perm[self.rank::self.world_size][:len(self.dataset) // self.world_size].tolist()
        return self._order

    def take(self, count: int) -> dict:
        """The next `count` rows, collated; an epoch's end continues into the next epoch's order."""
        rows = []
        while len(rows) < count:
            order = self._epoch_order()
            step = order[self.position:self.position + count - len(rows)]
            rows += [self.dataset[i] for i in step]
            self.position += len(step)
            if self.position == len(order):
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return self.collate_fn(rows)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._order = int(state["epoch"]), int(state["position"]), None
