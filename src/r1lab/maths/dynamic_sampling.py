"""DAPO dynamic sampling (Yu et al. 2025, sec. 3.2): a step trains only on groups whose rewards differ.

A group whose G rewards are all equal has advantage 0 everywhere: it adds no gradient, and a batch full of them
shrinks the step. DAPO keeps sampling prompts until the batch holds the configured number of informative groups
(those with reward variance and no unjudged reward), trains on exactly that many, and discards the rest. Here the
extra rounds are capped (`max_rounds`); a batch still short after them trains on the groups it has.
GRPO (r1lab.stages.grpo) runs the rounds; the prompts come from r1lab.data.prompt_stream.PromptStream.
Selected with `module/dynamic_sampling=dapo` (configs/module/dynamic_sampling/).
"""

from dataclasses import dataclass

import torch

from r1lab.maths.rl import unjudged_groups, zero_variance_groups


@dataclass(frozen=True)
class DynamicSampling:
    """informative_groups: groups a step trains on (None: the step's number of prompts, DAPO's setting); at most the
    step's prompts. max_rounds: extra sampling rounds at most, each of the step's number of prompts. seed: of the
    extra prompts' order (PromptStream)."""

    informative_groups: int | None = None
    max_rounds: int = 3
    seed: int = 0

    def target(self, prompts: int) -> int:
        """Informative groups wanted in a step of `prompts` prompts.

        >>> DynamicSampling().target(32), DynamicSampling(informative_groups=8).target(32)
        (32, 8)
        """
        target = prompts if self.informative_groups is None else self.informative_groups
        if not 1 <= target <= prompts:
            raise ValueError(f"module.dynamic_sampling.informative_groups={self.informative_groups}: must be between "
                             f"1 and the step's prompts (data.batch_size={prompts})")
        if self.max_rounds < 0:
            raise ValueError(f"module.dynamic_sampling.max_rounds={self.max_rounds}: must be >= 0")
        return target


def informative_groups(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N] rewards in consecutive groups -> [P] True where a group's rewards differ and all could be judged.

    >>> informative_groups(torch.tensor([1.0, 0.0, 1.0, 1.0, float("nan"), 0.0]), 2)
    tensor([ True, False, False])
    """
    return ~(unjudged_groups(rewards, group_size) | zero_variance_groups(rewards, group_size))


def first_informative(rewards: torch.Tensor, group_size: int, target: int) -> torch.Tensor:
    """Indices of the first `target` informative groups (fewer if there are fewer), in sampling order.

    >>> first_informative(torch.tensor([2.0, 2.0, 1.0, 2.0, 0.0, 0.0, 2.0, 0.0, 1.0, 2.0]), 2, 2)
    tensor([1, 3])
    >>> first_informative(torch.tensor([2.0, 2.0, 1.0, 2.0]), 2, 3)
    tensor([1])
    """
    return informative_groups(rewards, group_size).nonzero().squeeze(1)[:target]


def round_seed(seed: int, step: int, world_size: int, rank: int, extra_round: int) -> int:
    """The sampling seed of a step's round on a rank: round 0 is GRPO's usual `seed + step x world size + rank`;
    extra round k adds k x 2^24, beyond any step's offset.

    >>> round_seed(7, 3, 2, 1, 0), round_seed(7, 3, 2, 1, 2)
    (14, 33554446)
    """
    return seed + step * world_size + rank + extra_round * 2 ** 24
