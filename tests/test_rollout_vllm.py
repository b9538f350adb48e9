"""VLLMRollout on the tiny model: the rollout contract of HFRollout (shapes, eos, finished, text, seeds), weights
pushed after an optimiser step reach the sampler exactly, and a GRPO fast dev run with `rollout=vllm`."""

import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is installed by the `cpu` extra (make setup) or the `gpu` extra")

from vllm import SamplingParams

from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.maths.formats import render_r1_zero
from r1lab.rollout.engine import HFRollout, SamplingConfig, eos_ids
from r1lab.rollout.vllm_engine import VLLMRollout
from r1lab.stages.rollout_batch import completion_logprobs, pack_rollout
from r1lab.train import train

PROMPTS = [render_r1_zero(p) for p in ("What is 2 + 3?", "Calculate 12 + 30 - 7.", "What is 9 - 4?")]
GREEDY = SamplingConfig(temperature=0.0, max_new_tokens=12)


@pytest.fixture(scope="module")
def setup(tokenizer_dir):
    model, tokenizer = load_model(tokenizer_dir).eval(), load_tokenizer(tokenizer_dir)
    return model, tokenizer, VLLMRollout(model, tokenizer, kv_cache_bytes=64 << 20, logprobs=True)


def hf_logprobs(model, prompt: list[int], completions: list[list[int]]) -> list[torch.Tensor]:
    ids, attn, mask = pack_rollout([prompt] * len(completions), completions, pad_id=0)
    with torch.no_grad():
        logprobs = completion_logprobs(model, ids, attn, mask.size(1))[0]
    return [row[: len(c)] for row, c in zip(logprobs, completions)]


def test_greedy_completions_match_hf(setup):
    model, tokenizer, engine = setup
    fields = lambda groups: [[(c.text, c.token_ids, c.finished) for c in g] for g in groups]
    assert fields(engine.generate(PROMPTS, GREEDY)) == fields(HFRollout(model, tokenizer).generate(PROMPTS, GREEDY))


def test_completions_stop_at_and_keep_an_eos_id(setup):
    """A random model almost never samples its eos: make a token some samples contain an eos id too. The same seed
    then gives the same samples, cut right after that token (finished) or untouched."""
    model, tokenizer, engine = setup
    sampling = SamplingConfig(n=8, temperature=1.0, max_new_tokens=12, seed=0)
    uncut = [c for g in engine.generate(PROMPTS, sampling) for c in g]
    full = [c.token_ids for c in uncut]
    counts = {t: sum(t in ids for ids in full) for ids in full for t in ids}
    stop = next(t for t, k in counts.items() if 0 < k < len(full) // 2)
    before, before_eos = model.generation_config.eos_token_id, eos_ids(model, tokenizer)
    model.generation_config.eos_token_id = [*before_eos, stop]
    try:
        cut = [c for g in engine.generate(PROMPTS, sampling) for c in g]
    finally:
        model.generation_config.eos_token_id = before
    for c, ids, u in zip(cut, full, uncut):
        end = ids.index(stop) + 1 if stop in ids else len(ids)
        assert (c.token_ids, c.finished) == (ids[:end], stop in ids or u.finished)
        assert u.finished == (len(ids) < sampling.max_new_tokens and ids[-1] in before_eos)
        assert c.text == tokenizer.decode(c.token_ids, skip_special_tokens=True) and len(c.logprobs) == end
    assert any(c.finished for c in cut) and any(not c.finished for c in cut)


def test_sampling_shapes_and_seeds(setup):
    _, _, engine = setup
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=10, seed=3)
    a, b = engine.generate(PROMPTS, sampling), engine.generate(PROMPTS, sampling)
    assert [len(g) for g in a] == [4, 4, 4] and all(len(c.logprobs) == len(c.token_ids) for g in a for c in g)
    assert a == b                                                                         # same seed, same samples
    assert len({tuple(c.token_ids) for c in a[1]}) > 1                                    # n samples differ
    other = engine.generate(PROMPTS, SamplingConfig(n=4, temperature=1.0, max_new_tokens=10, seed=4))
    assert [[c.token_ids for c in g] for g in other] != [[c.token_ids for c in g] for g in a]
    with pytest.raises(ValueError, match="n >= 1"):
        engine.generate(PROMPTS, SamplingConfig(n=0))


def test_done_hears_each_prompt_as_it_finishes_and_samples_stay_the_same(setup):
    """Evaluations and rejection sampling show live progress from `done`; counting must not change what is drawn."""
    _, _, engine = setup
    sampling, heard = SamplingConfig(n=4, temperature=1.0, max_new_tokens=10, seed=3), []
    assert engine.generate(PROMPTS, sampling, done=heard.append) == engine.generate(PROMPTS, sampling)
    assert heard == [1, 2, 3]


def test_update_weights_after_an_optimiser_step_reaches_the_sampler(setup):
    """One real step on a fixed completion, then the engine's log-probs (of that completion, and of new samples from
    the same, prefix-cached prompt) equal the trained model's HF forward and differ from the untrained ones."""
    model, tokenizer, engine = setup
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = tokenizer(PROMPTS[1], add_special_tokens=False).input_ids
    sampling = SamplingConfig(n=4, temperature=1.0, max_new_tokens=16, seed=0)
    fixed = engine.generate(PROMPTS[1:2], sampling)[0][0]
    before = hf_logprobs(model, prompt, [fixed.token_ids])[0]
    assert torch.allclose(torch.tensor(fixed.logprobs), before, atol=1e-4)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    try:
        model.train()
        ids, attn, mask = pack_rollout([prompt], [fixed.token_ids], pad_id=0)
        loss = -completion_logprobs(model, ids, attn, mask.size(1))[0].mean()
        loss.backward()
        optimizer.step()
        model.eval()
        engine.update_weights(model)
        after = hf_logprobs(model, prompt, [fixed.token_ids])[0]
        scored = engine.llm.generate({"prompt_token_ids": prompt + fixed.token_ids},
                                     SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False), use_tqdm=False)
        vllm_after = torch.tensor([step[t].logprob for step, t in
                                   zip(scored[0].prompt_logprobs[len(prompt):], fixed.token_ids)])
        assert torch.allclose(vllm_after, after, atol=1e-4), (vllm_after - after).abs().max()
        assert (after - before).abs().max() > 0.05                                      # the step changed them
        fresh = engine.generate(PROMPTS[1:2], sampling)[0]                               # prompt KV was cached
        for c, lp in zip(fresh, hf_logprobs(model, prompt, [c.token_ids for c in fresh])):
            assert torch.allclose(torch.tensor(c.logprobs), lp, atol=1e-4), (torch.tensor(c.logprobs) - lp).abs().max()
    finally:
        model.zero_grad(set_to_none=True)
        model.load_state_dict(before_state)
        engine.update_weights(model)


def test_grpo_fast_dev_run_with_vllm(compose_train):
    cfg = compose_train("experiment=r1_zero", "debug=fdr", "rollout=vllm", "rollout.kv_cache_bytes=67108864",
                        "module.sampling.max_new_tokens=24")
    assert cfg.module.rollout._target_ == "r1lab.rollout.vllm_engine.VLLMRollout"
    metrics = train(cfg)
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
