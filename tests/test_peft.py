"""LoRA through `module/peft=lora` on the tiny model: merged weights equal peft's own merge and leave the model as it
was; the KL reference is the base with adapters off; SFT, distillation, reward model and GRPO train only the adapters
(base weights bitwise equal), export a plain merged HF model with the same logits plus the adapter, and resume from a
checkpoint; vLLM sampling from the pushed merged weights gives HF's greedy completions."""

import subprocess
import sys
from copy import deepcopy

import hydra
import lightning as L
import pytest
import torch
from omegaconf import OmegaConf, open_dict
from peft import LoraConfig, PeftModel

from r1lab.infra.hf import load_model
from r1lab.infra.peft import AdaptersDisabled, apply_peft, merged_weights
from r1lab.infra.utils import instantiate_each
from r1lab.maths.reward_models import load_reward_model
from r1lab.train import train

LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                 "down_proj"])
IDS = torch.tensor([[5, 9, 14, 3, 7, 21]])


def perturbed_lora(path) -> PeftModel:
    """The model at `path` with LoRA adapters whose B is random (fresh adapters are a no-op: B = 0)."""
    torch.manual_seed(0)
    model = apply_peft(load_model(path), LoraConfig(**LORA))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)
    return model.eval()


def test_merged_weights_match_peft_merge_and_leave_the_model_unchanged(tokenizer_dir):
    model = perturbed_lora(tokenizer_dir)
    before = {n: p.clone() for n, p in model.named_parameters()}
    merged = dict(merged_weights(model))
    reference = deepcopy(model).merge_and_unload().state_dict()
    assert set(merged) == set(reference) | {"lm_head.weight"} or set(merged) == set(reference)
    for name, tensor in reference.items():
        torch.testing.assert_close(merged[name], tensor, rtol=0, atol=1e-6, msg=name)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())
    assert not torch.equal(merged["model.layers.0.self_attn.q_proj.weight"],
                           before["base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"])


def test_apply_peft_none_is_full_fine_tuning_and_reference_is_the_base(tokenizer_dir):
    base = load_model(tokenizer_dir).eval()
    assert apply_peft(base, None) is base
    model = perturbed_lora(tokenizer_dir)
    with torch.no_grad():
        adapted, off = model(IDS).logits, AdaptersDisabled(model)(IDS).logits
        expected = base(IDS).logits
    assert torch.equal(off, expected) and not torch.allclose(adapted, expected, atol=1e-3)
    assert model(IDS).logits.requires_grad  # the adapters are back on after the reference's forward


STAGES = {  # stage -> overrides (a few steps on the tiny model)
    "sft": ["experiment=cold_start", "data.batch_size=4"],
    "distill": ["experiment=distill_kd", "data.batch_size=4"],
    "reward_model": ["experiment=reward_model_helpfulness", "data.batch_size=4"],
    "grpo": ["experiment=r1_zero", "data.batch_size=2", "module.sampling.n=2", "module.sampling.max_new_tokens=8",
             "module.kl_coef=0.1", "module.mu=2", "+module.rewards.length.weight=1.0",  # the random tiny model earns no
             f"+module.rewards.length.fn._target_={__name__}.length_reward", "+module.rewards.length.fn._partial_=true"],
}                                                          # accuracy or format reward: a length reward gives advantages


def length_reward(completions: list, **_) -> list[float]:
    """Characters / 100: a reward that differs between a random model's completions (GRPO test above)."""
    return [len(c) / 100 for c in completions]
COMMON = ["module/peft=lora", "module.peft.r=4", "module.optimizer.lr=1e-2", "trainer.max_steps=2",
          "trainer.limit_val_batches=0", "logger=none", "callbacks.model_checkpoint.every_n_train_steps=1"]


def fit(cfg):
    L.seed_everything(0)
    data, module = hydra.utils.instantiate(cfg.data), hydra.utils.instantiate(cfg.module)
    module.configure_model()
    frozen = {n: p.detach().clone() for n, p in module.model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in module.model.named_parameters() if p.requires_grad}
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_each(cfg.callbacks), logger=False)
    trainer.fit(module, datamodule=data)
    return module, frozen, trainable, trainer


@pytest.mark.parametrize("stage", STAGES)
def test_lora_trains_only_adapters_and_exports_merged(stage, compose_train, tmp_path):
    cfg = compose_train(*STAGES[stage], *COMMON)
    module, frozen, trainable, trainer = fit(cfg)
    model = module.model
    assert isinstance(model, PeftModel) and trainer.global_step == 2  # GRPO: one batch of mu=2 steps
    assert all("lora_" in n or "modules_to_save" in n for n in trainable), sorted(trainable)
    if stage == "reward_model":
        assert any("score.modules_to_save" in n for n in trainable)  # the new value head trains
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], p) for n, p in frozen.items())  # base weights bitwise equal
    assert any(not torch.equal(params[n], p) for n, p in trainable.items() if "lora_B" in n)
    assert len(trainer.optimizers[0].param_groups[0]["params"]) == len(trainable)

    export = tmp_path / "run" / "model"
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    pad = module.tokenizer.pad_token_id
    reloaded = load_reward_model(str(export), pad_token_id=pad) if stage == "reward_model" else load_model(export)
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    model.eval(), reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(IDS).logits, model(IDS).logits, rtol=0, atol=1e-5)


def test_lora_resumes_from_a_checkpoint(compose_train, tmp_path):
    def run(steps: int, *extra: str):
        cfg = compose_train(*STAGES["sft"], *COMMON, f"trainer.max_steps={steps}", *extra)
        with open_dict(cfg):
            del cfg["hydra"]
        return train(OmegaConf.create(OmegaConf.to_container(cfg, resolve=True)))

    run(2)
    ckpt = next((tmp_path / "run").rglob("last.ckpt"), None) or sorted((tmp_path / "run").rglob("*.ckpt"))[-1]
    state = torch.load(ckpt, weights_only=False)["state_dict"]
    assert any("lora_A" in k for k in state)
    run(3, f"ckpt_path={ckpt}")
    resumed = torch.load(sorted((tmp_path / "run").rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)[-1],
                         weights_only=False)
    assert resumed["global_step"] == 3


VLLM_SCRIPT = """
import sys, torch
from peft import LoraConfig
from r1lab.infra.hf import load_model, load_tokenizer
from r1lab.infra.peft import apply_peft
from r1lab.maths.formats import render_r1_zero
from r1lab.rollout.engine import HFRollout, SamplingConfig
from r1lab.rollout.vllm_engine import VLLMRollout
path = sys.argv[1]
torch.manual_seed(0)
model = apply_peft(load_model(path), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"]))
tok = load_tokenizer(path)
engine = VLLMRollout(model, tok, kv_cache_bytes=64 << 20)           # pushes the merged weights once at start
with torch.no_grad():
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.normal_(std=0.5)
engine.update_weights(model)                                         # the adapters now change the outputs
prompts = [render_r1_zero(p) for p in ("What is 2 + 3?", "Calculate 12 + 30 - 7.")]
greedy = SamplingConfig(temperature=0.0, max_new_tokens=12)
fields = lambda groups: [[c.token_ids for c in g] for g in groups]
model.eval()
ours, hf = fields(engine.generate(prompts, greedy)), fields(HFRollout(model, tok).generate(prompts, greedy))
with model.disable_adapter():
    base = fields(HFRollout(model, tok).generate(prompts, greedy))
assert ours == hf, (ours, hf)
assert ours != base, "the adapters did not change the greedy completions: the test shows nothing"
print("OK")
"""


def test_vllm_samples_from_the_merged_lora_weights(tokenizer_dir):
    pytest.importorskip("vllm", reason="vLLM is installed by the `cpu` extra (make setup) or the `gpu` extra")
    # a fresh process: vLLM 0.32 cannot start an engine where an earlier one shut down
    out = subprocess.run([sys.executable, "-c", VLLM_SCRIPT, str(tokenizer_dir)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]
