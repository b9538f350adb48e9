"""DAPO on the tiny model: the soft overlong penalty against hand-computed values, dynamic sampling refilling a batch
whose groups have no reward variance (until full, or until the cap), and exact resume of the extra-prompt stream."""

import pytest
import torch

from r1lab.data.prompt_stream import PromptStream
from r1lab.maths.dynamic_sampling import DynamicSampling, first_informative
from r1lab.maths.rewards import overlong_penalty, overlong_reward
from r1lab.stages import grpo
from r1lab.stages.grpo import GRPOModule
from r1lab.train import train

G, PROMPTS, MICRO = 2, 4, 2
RUN = ["experiment=r1_zero", f"data.batch_size={PROMPTS}", "data.val_limit=2", f"module.sampling.n={G}",
       "module.sampling.max_new_tokens=8", f"module.micro_batch_size={MICRO}", "module/dynamic_sampling=dapo",
       "logger=csv", "trainer.limit_val_batches=0", "callbacks.model_checkpoint.every_n_train_steps=1",
       "callbacks.model_checkpoint.save_top_k=-1"]


def test_overlong_penalty_at_dapos_lengths():
    """DAPO's L_max 20480, L_cache 4096: free up to 16384 tokens, -(length - 16384) / 4096 in the buffer, -1 beyond."""
    lengths = [1000, 16384, 17408, 18432, 20480, 30000]
    assert [overlong_penalty(n, 20480, 4096) for n in lengths] == [0.0, 0.0, -0.25, -0.5, -1.0, -1.0]
    assert overlong_reward(["x"] * 3, completion_tokens=[90, 100, 127], max_tokens=128, buffer=32) == \
        [0.0, -0.125, -0.96875]                                      # (96 - 100) / 32, (96 - 127) / 32
    with pytest.raises(ValueError, match="completion_tokens"):
        overlong_reward(["x"])
    with pytest.raises(ValueError, match="buffer"):
        overlong_penalty(10, max_tokens=8, buffer=16)


def test_first_informative_groups_and_target():
    rewards = torch.tensor([1.0, 1.0, 0.0, 2.0, float("nan"), 1.0, 3.0, 0.0, 0.0, 0.0, 1.0, 2.0])   # 6 groups of 2
    assert first_informative(rewards, 2, 4).tolist() == [1, 3, 5]    # equal, differ, unjudged, differ, equal, differ
    assert first_informative(rewards, 2, 2).tolist() == [1, 3]
    with pytest.raises(ValueError, match="informative_groups=5.*data.batch_size=4"):
        DynamicSampling(informative_groups=5).target(4)


def informative(answer: str, modulus: int) -> bool:
    return sum(map(ord, answer)) % modulus == 0


def script(monkeypatch, modulus: int) -> dict:
    """Rewards by rule: a group is informative (rewards 0, 1) iff its gold answer's code-point sum is a multiple of
    `modulus`, else all 0. Records each round's prompts and answers, and each step's rollout."""
    seen = {"rounds": [], "rollouts": []}

    def rewards(specs, texts, columns, step=0):
        total = [float(i % 2) if informative(a, modulus) else 0.0 for i, a in enumerate(columns["answer"])]
        return total, {"scripted": total}

    sample_and_score, rollout = GRPOModule._sample_and_score, GRPOModule._rollout

    def recorded_round(self, batch, extra_round=0):
        seen["rounds"].append((self.global_step, extra_round, tuple(batch["prompt"]), tuple(batch["answer"])))
        return sample_and_score(self, batch, extra_round)

    def recorded_rollout(self, batch):
        out = rollout(self, batch)
        seen["rollouts"].append(out)
        return out

    monkeypatch.setattr(grpo, "weighted_rewards", rewards)
    monkeypatch.setattr(GRPOModule, "_sample_and_score", recorded_round)
    monkeypatch.setattr(GRPOModule, "_rollout", recorded_rollout)
    return seen


@pytest.mark.parametrize(("modulus", "max_rounds"), [(3, 3), (7, 1), (10**9, 2)], ids=["fills", "capped", "none"])
def test_dynamic_sampling_refills_until_full_or_capped(compose_train, monkeypatch, modulus, max_rounds):
    seen = script(monkeypatch, modulus)
    train(compose_train(*RUN, "trainer.max_steps=2", f"module.dynamic_sampling.max_rounds={max_rounds}"))
    n_micro = -(-PROMPTS * G // MICRO)
    for step, (rollout, micro, stats) in enumerate(seen["rollouts"]):
        rounds = [r for r in seen["rounds"] if r[0] == step]
        assert [r[1] for r in rounds] == list(range(len(rounds)))
        assert all(len(r[2]) == PROMPTS for r in rounds)             # each extra round: the step's number of prompts
        found = [informative(a, modulus) for r in rounds for a in r[3]]
        # another round only while short, never more than max_rounds extra ones
        assert all(sum(found[:PROMPTS * (k + 1)]) < PROMPTS for k in range(len(rounds) - 1))
        assert len(rounds) - 1 <= max_rounds
        assert len(rounds) - 1 == max_rounds or sum(found) >= PROMPTS
        kept = min(sum(found), PROMPTS)
        assert stats["extra_rounds"].item() == len(rounds) - 1 and stats["informative_groups"].item() == kept
        assert micro == n_micro                                       # the same on every rank, whatever was found
        assert rollout.input_ids.size(0) == max(kept * G, n_micro)   # inert rows top up to one a micro-batch
        assert int((rollout.advantages != 0).sum()) == kept * G      # only informative groups carry a signal
        assert int((rollout.weights != 0).any(1).sum()) <= kept * G
    if modulus == 10**9:
        assert all(s["informative_groups"].item() == 0 for _, _, s in seen["rollouts"])


def test_resume_continues_the_extra_prompt_stream(compose_train, monkeypatch, tmp_path):
    """A run resumed from step 1's checkpoint draws the same extra prompts at steps 1 and 2 as the unbroken run."""
    seen = script(monkeypatch, 7)
    whole = compose_train(*RUN, "trainer.max_steps=3", "module.dynamic_sampling.max_rounds=2")
    train(whole)
    ckpt = tmp_path / "run" / "checkpoints" / "step_000001.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["prompt_stream"]
    extra = [r for r in seen["rounds"] if r[1] > 0]
    assert state == {"epoch": 0, "position": PROMPTS * sum(1 for r in extra if r[0] == 0)}
    seen["rounds"].clear()
    resumed = compose_train(*RUN, "trainer.max_steps=3", "module.dynamic_sampling.max_rounds=2", f"ckpt_path={ckpt}")
    resumed.paths.output_dir = str(tmp_path / "resumed")
    train(resumed)
    assert [r for r in seen["rounds"] if r[1] > 0] == [r for r in extra if r[0] >= 1]
    assert any(r[0] == 2 for r in extra)                              # the comparison covers extra rounds after it


def test_prompt_stream_takes_disjoint_equal_shares():
    rows = [{"prompt": str(i)} for i in range(10)]
    streams = [PromptStream(rows, lambda r: [x["prompt"] for x in r], seed=3, rank=r, world_size=3) for r in range(3)]
    shares = [s.take(3) for s in streams]
    assert sorted(sum(shares, [])) == sorted(set(sum(shares, [])))   # no prompt on two ranks
    assert [s.state_dict() for s in streams] == [{"epoch": 1, "position": 0}] * 3
