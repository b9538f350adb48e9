"""Tests of the tiny tokenizer and models (r1lab.demo.models) and of the build stage (r1lab.build) that writes them."""

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, AutoTokenizer

from r1lab.build import build_all, world_texts
from r1lab.demo.models import CHATML, SIZES, build_model, build_tokenizer, count_parameters
from r1lab.demo.world import write_world
from r1lab.infra import hf
from r1lab.maths import formats

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SMALL = dict(n_reasoning_train=800, n_reasoning_val=20, n_reasoning_test=20, n_general_train=250, n_general_val=20,
             n_general_test=20, n_facts=60, n_cold_start=100, n_cold_start_val=10, n_pretrain_val=20)
SAMPLES = [
    "Assistant: <think> 123 加 45 等于 168。 </think> <answer> 168 </answer>",
    "<reasoning_process>12 * 3 = 36.</reasoning_process><summary>The answer is \\boxed{(25 - 5) * 3}.</summary>",
    "What is the capital of Veloria? 所以答案是 Tarn。 Ünïcödé ✓",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("world")
    write_world(out, seed=0, sizes=SMALL)
    return out


@pytest.fixture(scope="module")
def tokenizer(world):
    return build_tokenizer(world_texts(world), vocab_size=1024)


def test_tags_are_single_tokens_and_survive_skip_special(tokenizer):
    for tag in formats.TAGS:
        assert len(tokenizer(tag, add_special_tokens=False).input_ids) == 1, tag
        assert tokenizer.convert_tokens_to_ids(tag) in tokenizer(f" x{tag}y ", add_special_tokens=False).input_ids
    text = formats.r1_zero_response("2 + 3 = 5.", "5") + "<|im_end|>"
    ids = tokenizer(text, add_special_tokens=False).input_ids
    assert ids[-1] == tokenizer.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == text.removesuffix("<|im_end|>")


def test_round_trips_digits_no_bos(tokenizer):
    for text in SAMPLES:
        ids = tokenizer(text).input_ids
        assert tokenizer.decode(ids) == text
        assert tokenizer.bos_token_id not in ids
    digits = tokenizer.convert_ids_to_tokens(tokenizer("x 90817", add_special_tokens=False).input_ids)
    assert digits[-5:] == list("90817")
    assert len(tokenizer) <= 1024 and tokenizer.padding_side == "left"
    assert tokenizer.pad_token == "<|pad|>" and tokenizer.bos_token == "<|endoftext|>"


def test_chat_template_exact(tokenizer):
    messages = [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "5"}]
    assert tokenizer.chat_template == CHATML
    assert tokenizer.apply_chat_template(messages, tokenize=False) == (
        "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n5<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(messages[:1], tokenize=False, add_generation_prompt=True)
    assert prompt == "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"
    ids = tokenizer.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert ids["input_ids"] == tokenizer(prompt, add_special_tokens=False).input_ids
    assert ids["input_ids"][0] == tokenizer.convert_tokens_to_ids("<|im_start|>")


def test_model_sizes_and_generation_config(tokenizer):
    tiny, demo, medium = (build_model(tokenizer, size, seed=0) for size in ("tiny", "demo", "medium"))
    vocab = len(tokenizer)
    assert 0.7e6 < count_parameters(tiny) < 1.3e6 and 3e6 < count_parameters(demo) < 4.5e6
    assert 9e6 < count_parameters(medium) < 12e6
    student = build_model(tokenizer, "student", seed=0)   # the distillation student: narrower than the demo model
    assert count_parameters(tiny) < count_parameters(student) < 0.6 * count_parameters(demo)
    assert student.config.hidden_size < demo.config.hidden_size
    assert count_parameters(tiny) == 1_053_824 - (2048 - vocab) * SIZES["tiny"]["hidden_size"]
    assert tiny.lm_head.weight.data_ptr() == tiny.model.embed_tokens.weight.data_ptr()
    ids = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>", "<|pad|>"])
    assert tiny.generation_config.eos_token_id == ids[:2] and tiny.generation_config.pad_token_id == ids[2]
    again = build_model(tokenizer, "tiny", seed=0)
    assert all(torch.equal(a, b) for a, b in zip(tiny.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match="huge"):
        build_model(tokenizer, "huge", seed=0)


def test_save_reload_offline_same_ids_and_generates(tokenizer, tmp_path):
    model = build_model(tokenizer, {**SIZES["tiny"], "num_hidden_layers": 1}, seed=1)
    out = hf.save_pretrained_atomic(model, tokenizer, tmp_path / "m")
    reloaded, tok = AutoModelForCausalLM.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    assert tok.padding_side == "left" and hf.load_tokenizer(out).padding_side == "left"
    assert tok(SAMPLES).input_ids == tokenizer(SAMPLES).input_ids
    assert tok.chat_template == CHATML and tok.eos_token == "<|im_end|>" and tok.pad_token == "<|pad|>"
    assert tok.decode(tok(SAMPLES[0]).input_ids, skip_special_tokens=True) == SAMPLES[0]
    assert reloaded.generation_config.eos_token_id == model.generation_config.eos_token_id
    batch = tok(["2 + 3 =", "What is the capital of Veloria?"], return_tensors="pt", padding=True)
    assert (batch.attention_mask[0, 0] == 0).item()  # left padding
    out_ids = reloaded.generate(**batch, max_new_tokens=4, do_sample=False)  # [2, T + <=4]
    assert out_ids.shape[0] == 2 and out_ids.shape[1] <= batch.input_ids.shape[1] + 4


def test_build_all_skips_existing_and_refuses_other_settings(tmp_path, monkeypatch):
    world_dir, models_dir = tmp_path / "world", tmp_path / "models"
    first = build_all(world_dir, models_dir, seed=0, sizes=["tiny"], world_sizes=SMALL, vocab_size=1024)
    assert first["world_built"] and first["tokenizer_built"] and first["models"]["tiny"]["built"]
    hf.check_model_dir(models_dir / "tiny")
    assert json.loads((world_dir / "manifest.json").read_text())["sizes"]["n_reasoning_train"] == 800
    second = build_all(world_dir, models_dir, seed=0, sizes=["tiny"], world_sizes=SMALL, vocab_size=1024)
    assert not (second["world_built"] or second["tokenizer_built"] or second["models"]["tiny"]["built"])
    monkeypatch.setitem(SIZES, "tiny", dict(SIZES["tiny"], num_hidden_layers=2))   # a size changed in the code
    resized = build_all(world_dir, models_dir, seed=0, sizes=["tiny"], world_sizes=SMALL, vocab_size=1024)
    assert resized["models"]["tiny"]["built"] and not resized["world_built"]
    assert json.loads((models_dir / "tiny" / "config.json").read_text())["num_hidden_layers"] == 2
    with pytest.raises(ValueError, match="seed"):
        build_all(world_dir, models_dir, seed=1, sizes=["tiny"], world_sizes=SMALL, vocab_size=1024)
    with pytest.raises(ValueError, match="vocab_size"):
        build_all(world_dir, models_dir, seed=0, sizes=["tiny"], world_sizes=SMALL, vocab_size=900)
    third = build_all(world_dir, models_dir, seed=0, sizes=["tiny"], world_sizes=SMALL, vocab_size=900, overwrite=True)
    assert third["models"]["tiny"]["built"] and third["vocab_size"] <= 900


def test_build_config_composes_into_build_all_arguments(tmp_path):
    with initialize_config_dir(str(CONFIGS), version_base="1.3"):
        cfg = compose("build", overrides=[f"paths.root_dir={tmp_path}", "model_sizes=[tiny]"])
    assert cfg.paths.world_dir == f"{tmp_path}/artifacts/world"
    assert cfg.paths.models_dir == f"{tmp_path}/artifacts/models"
    sizes, options = OmegaConf.to_container(cfg.world.sizes), OmegaConf.to_container(cfg.world.options)
    assert set(sizes) == set(SMALL) and set(options) == {"lang_mix", "cold_start_lang_mix", "style_mix",
                                                      "slip_frac", "broken_frac", "sloppy_frac", "r1_zero_frac",
                                                      "fact_repeats"}
    assert set(cfg.model_sizes) <= set(SIZES) and cfg.vocab_size == 2048 and cfg.overwrite is False
