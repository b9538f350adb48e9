"""Stop strings: the template's stop strings reach every sampling config, HFRollout ends generation at them and cuts
the completion right after the token that completes one (text = decode(token_ids), finished), and vLLM gives the same
completions for the same greedy ids."""

import hydra
import pytest

from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.maths.formats import render_r1_zero
from r1lab.rollout.engine import HFRollout, SamplingConfig, cut_at_stop, raw_decoder

PROMPTS = [render_r1_zero(p) for p in ("What is 2 + 3?", "Calculate 12 + 30 - 7.", "What is 9 - 4?")]


@pytest.fixture(scope="module")
def setup(tokenizer_dir):
    return load_model(tokenizer_dir).eval(), load_tokenizer(tokenizer_dir)


def greedy(stop: list[str], max_new_tokens: int = 24) -> SamplingConfig:
    return SamplingConfig(temperature=0.0, max_new_tokens=max_new_tokens, stop=stop)


def a_stop_string(model, tokenizer) -> tuple[str, list[list[int]]]:
    """The text of the first prompt's first 6 greedy tokens (a random model's text is no R1 tag: it can complete no
    earlier than token 6), and every prompt's unstopped greedy ids."""
    full = [g[0].token_ids for g in HFRollout(model, tokenizer).generate(PROMPTS, greedy([]))]
    assert len(full[0]) > 8, "the tiny model ended its greedy completion early: pick another prompt"
    return raw_decoder(tokenizer)(full[0][:6]), full


def test_r1_zero_template_stops_after_answer_in_every_sampling_config(compose_train, tokenizer_dir):
    train = compose_train("experiment=r1_zero")
    module = hydra.utils.instantiate(train.module)
    assert module.hparams.sampling.stop == ["</answer>"] and module.hparams.val_sampling.stop == ["</answer>"]
    assert hydra.utils.instantiate(train.template).stop == ["</answer>"]
    for config_name in ("eval", "sample"):
        for template, stop in (("r1_zero", ["</answer>"]), ("chat", [])):
            cfg = compose_train(f"template={template}", f"model_dir={tokenizer_dir}", config_name=config_name)
            assert hydra.utils.instantiate(cfg.sampling).stop == stop, (config_name, template)
    chat = compose_train("experiment=reasoning_rl")
    assert hydra.utils.instantiate(chat.module.sampling).stop == []


def test_sampling_config_refuses_a_bare_or_empty_stop_string():
    with pytest.raises(ValueError, match="list of non-empty strings"):
        SamplingConfig(stop="</answer>")
    with pytest.raises(ValueError, match="list of non-empty strings"):
        SamplingConfig(stop=["</answer>", ""])


def test_cut_keeps_the_stop_string_and_decodes_to_the_text(setup):
    _, tokenizer = setup
    ids = tokenizer(" 2 + 3 = 5. </think> <answer> 5 </answer> and then more <answer> 6 </answer>",
                    add_special_tokens=False).input_ids
    cut, stopped = cut_at_stop(ids, raw_decoder(tokenizer), ["</answer>"])
    assert stopped and tokenizer.decode(cut).rstrip().endswith("<answer> 5 </answer>")
    assert "</answer>" not in tokenizer.decode(cut[:-1])                           # the first token that completes it
    assert cut_at_stop(ids, raw_decoder(tokenizer), ["</summary>"]) == (ids, False)


def test_hf_rollout_ends_generation_at_a_stop_string(setup):
    """Each row is cut where `cut_at_stop` cuts its unstopped greedy ids, and generation itself ends there: with the
    stop string of the first row, fewer forward passes run than without it."""
    model, tokenizer = setup
    stop, full = a_stop_string(model, tokenizer)
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    try:
        unstopped = HFRollout(model, tokenizer, batch_size=1).generate(PROMPTS[:1], greedy([]))
        n_full = len(calls)
        stopped = HFRollout(model, tokenizer, batch_size=1).generate(PROMPTS[:1], greedy([stop]))
    finally:
        hook.remove()
    assert len(calls) - n_full < n_full and not unstopped[0][0].finished
    groups = HFRollout(model, tokenizer).generate(PROMPTS, greedy([stop]))
    assert groups[0][0] == stopped[0][0]
    for (completion,), ids in zip(groups, full):
        cut, hit = cut_at_stop(ids, raw_decoder(tokenizer), [stop])
        assert (completion.token_ids, completion.finished) == (cut, hit)
        assert completion.text == tokenizer.decode(cut, skip_special_tokens=True)
    assert groups[0][0].finished and len(groups[0][0].token_ids) < len(full[0])


def test_vllm_cuts_where_hf_cuts(setup):
    """The same greedy ids give the same completions on vLLM, which is told the stop strings, as on HFRollout."""
    pytest.importorskip("vllm", reason="vLLM is installed by the `cpu` extra (make setup) or the `gpu` extra")
    from r1lab.rollout.vllm_engine import VLLMRollout

    model, tokenizer = setup
    stop, full = a_stop_string(model, tokenizer)
    engine = VLLMRollout(model, tokenizer, kv_cache_bytes=64 << 20)
    fields = lambda groups: [[(c.text, c.token_ids, c.finished) for c in g] for g in groups]
    vllm_groups = engine.generate(PROMPTS, greedy([stop]))
    assert fields(vllm_groups) == fields(HFRollout(model, tokenizer).generate(PROMPTS, greedy([stop])))
    assert vllm_groups[0][0].finished and len(vllm_groups[0][0].token_ids) < len(full[0])
