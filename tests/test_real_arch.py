"""The real-model path on CPU: a random-init Qwen2 model with Qwen's vocabulary size (151,936 rows, far more than the
project tokenizer's ids, as Qwen's own embeddings outnumber its tokenizer), a ChatML tokenizer with Qwen-style eos ids,
left padding, and the real-scale presets (configs/experiment/real/) scaled down: cold-start SFT, R1-Zero GRPO,
reasoning RL from the SFT model, and evaluation, a few steps each."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM, GenerationConfig, Qwen2Config, Qwen2ForCausalLM

from r1lab.eval import run as run_eval
from r1lab.infra.hf import load_tokenizer, save_pretrained_atomic
from r1lab.maths.formats import render_chat
from r1lab.train import train

QWEN_VOCAB = 151936
TINY = ["trainer.max_steps=2", "trainer.val_check_interval=2", "trainer.limit_val_batches=1", "logger=csv",
        "callbacks.model_checkpoint.every_n_train_steps=2", "trainer.accumulate_grad_batches=1"]
GRPO = [*TINY, "data.batch_size=2", "data.val_batch_size=2", "data.val_limit=2", "module.sampling.n=2",
        "module.sampling.max_new_tokens=8", "module.micro_batch_size=2", "module.scheduler.warmup_steps=1"]


@pytest.fixture(scope="module")
def qwen_dir(tokenizer_dir, tmp_path_factory):
    tokenizer = load_tokenizer(tokenizer_dir)
    im_end, endoftext = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    config = Qwen2Config(vocab_size=QWEN_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=2048,
                         tie_word_embeddings=True, bos_token_id=endoftext, eos_token_id=im_end,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(bos_token_id=endoftext, eos_token_id=[im_end, endoftext],
                                               pad_token_id=tokenizer.pad_token_id)  # as Qwen2.5's chat models
    return save_pretrained_atomic(model, tokenizer, tmp_path_factory.mktemp("qwen") / "model")


def test_real_presets_run_sft_grpo_and_eval_scaled_down(compose_train, qwen_dir, tmp_path):
    """The presets' own settings stay (lr, KL, stop strings, gradient checkpointing, micro-batches of one row);
    only the lengths, counts and the rollout engine (transformers' generate on CPU) are scaled down."""
    model, tokenizer = AutoModelForCausalLM.from_pretrained(qwen_dir), load_tokenizer(qwen_dir)
    assert model.config.model_type == "qwen2" and model.get_input_embeddings().num_embeddings == QWEN_VOCAB
    assert len(tokenizer) < QWEN_VOCAB and tokenizer.padding_side == "left"
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token_id not in model.generation_config.eos_token_id
    assert render_chat("2 + 3?", tokenizer) == "<|im_start|>user\n2 + 3?<|im_end|>\n<|im_start|>assistant\n"

    sft = compose_train("experiment=real/cold_start", f"model.path={qwen_dir}", *TINY, "data.batch_size=1")
    assert sft.module.gradient_checkpointing and sft.module.optimizer.lr == 1e-5 and sft.model.dtype == "float32"
    sft.paths.output_dir = str(tmp_path / "sft")
    assert train(sft)

    zero = compose_train("experiment=real/r1_zero", f"model.path={qwen_dir}", *GRPO)
    zero.paths.output_dir = str(tmp_path / "r1_zero")
    hp = zero.module
    assert (hp.kl_coef, hp.optimizer.lr, hp.sampling.n, hp.gradient_checkpointing) == (0.001, 1e-6, 2, True)
    assert list(zero.template.stop) == ["</answer>"]
    metrics = train(zero)
    assert "val/pass@1" in metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())

    rl = compose_train("experiment=real/reasoning_rl", f"model.path={tmp_path / 'sft' / 'model'}", *GRPO)
    rl.paths.output_dir = str(tmp_path / "reasoning_rl")
    assert rl.module.loss.clip_high == 10.0 and "language" in rl.module.rewards
    assert train(rl)

    ev = compose_train(f"model_dir={tmp_path / 'reasoning_rl' / 'model'}", "template=chat", "limit=2", "k=2",
                       "sampling.max_new_tokens=8", config_name="eval")
    ev.output_dir = str(tmp_path / "eval")
    metrics = run_eval(ev)
    assert metrics["prompts"] == 2 and metrics["length"] > 0
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all(s["prompt"].startswith("<|im_start|>user\n") for s in samples)
