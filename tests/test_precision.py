"""Precision that learns: training keeps fp32 master weights (`model.dtype=float32`, bf16 only in the autocast of
`trainer.precision=bf16-mixed`), or DeepSpeed keeps them; a bf16 model under any other strategy is refused before
anything loads (r1lab.infra.checks.precision_problems). At R1's fine-tuning lr (1e-6) AdamW's steps are below bf16's
resolution for most weights, so bf16 weights barely move where fp32 ones all do.

    pytest tests/test_precision.py
"""

import hydra
import pytest
import torch
from omegaconf import OmegaConf

import r1lab.train
from r1lab.infra.checks import ConfigError, check_config, precision_problems
from r1lab.infra.hf import load_model
from r1lab.infra.utils import ROOT, instantiate_each

LR = 1e-6       # R1's RL learning rate (its SFT: 5e-5 decayed far lower)
STEPS = 3
PRESETS = sorted(p.stem for p in (ROOT / "configs" / "model").glob("*.yaml"))


def presets_by_dtype() -> dict[str, list[str]]:
    """The model presets grouped by the dtype they keep weights in (one training run tests each group)."""
    groups: dict[str, list[str]] = {}
    for preset in PRESETS:
        groups.setdefault(str(OmegaConf.load(ROOT / "configs" / "model" / f"{preset}.yaml").dtype), []).append(preset)
    return groups


def changed_fraction(before: dict[str, torch.Tensor], model: torch.nn.Module) -> float:
    """The share of the weights in `before` that differ now."""
    after = {name: p.detach() for name, p in model.named_parameters()}
    return sum((after[n] != w).sum().item() for n, w in before.items()) / sum(w.numel() for w in before.values())


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def adamw_steps(model: torch.nn.Module, autocast: bool) -> float:
    """STEPS AdamW steps at LR on one batch of random tokens (bf16 autocast or not): the fraction of weights changed."""
    torch.manual_seed(0)
    tokens = torch.randint(0, model.config.vocab_size, (4, 32))
    before, optimizer = snapshot(model), torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    for _ in range(STEPS):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=tokens, labels=tokens).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return changed_fraction(before, model)


def test_a_small_lr_moves_fp32_master_weights_and_not_bf16_ones(tokenizer_dir):
    fp32 = adamw_steps(load_model(tokenizer_dir, "float32"), autocast=True)    # bf16 compute, fp32 weights
    bf16 = adamw_steps(load_model(tokenizer_dir, "bfloat16"), autocast=False)  # the optimiser steps on bf16 weights
    assert fp32 > 0.95
    assert bf16 < 0.2          # measured: ~1.0 and ~0.02


@pytest.mark.parametrize("presets", presets_by_dtype().values(), ids=presets_by_dtype().keys())
def test_every_model_preset_learns_at_a_small_lr_or_is_refused(compose_train, tokenizer_dir, presets):
    """The `model=` presets (their dtype on the tiny weights; one run per dtype) trained as `r1lab.train` builds them,
    on one CPU process with bf16-mixed: either the check refuses them, naming what to set, or a 1e-6 lr moves (almost)
    every weight."""
    preset = presets[0]
    cfg = compose_train("experiment=cold_start", f"model={preset}", f"model.path={tokenizer_dir}", "trainer=cpu",
                        "trainer.precision=bf16-mixed", f"trainer.max_steps={STEPS}", "trainer.limit_val_batches=0",
                        f"module.optimizer.lr={LR}", "module.scheduler=null", "data.batch_size=4", "logger=none",
                        "callbacks.model_checkpoint=null", "callbacks.hf_export=null")
    try:
        check_config(cfg)
    except ConfigError as err:
        assert "set model.dtype=float32" in str(err)
        return
    module = hydra.utils.instantiate(cfg.module)
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=instantiate_each(cfg.callbacks),
                                      logger=instantiate_each(cfg.logger) or False, enable_checkpointing=False)
    module.configure_model()
    before = snapshot(module.model)
    trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    assert trainer.global_step == STEPS
    assert changed_fraction(before, module.model) > 0.95, f"model={presets} ({cfg.model.dtype}) barely learn"


@pytest.fixture
def nothing_loads(monkeypatch):
    """Fail the test if train() gets as far as instantiating anything (data, module, trainer)."""
    def refuse(*args, **kwargs):
        raise AssertionError("train() instantiated something before the config was checked")
    monkeypatch.setattr(r1lab.train.hydra.utils, "instantiate", refuse)


@pytest.mark.parametrize("trainer", [["trainer=cpu"], ["trainer=default"], ["trainer=gpu"], ["trainer=ddp"],
                                     ["trainer=ddp", "cluster=slurm"], ["trainer=cpu", "+trainer.strategy=fsdp"]])
def test_bf16_master_weights_are_refused_before_loading(compose_train, nothing_loads, trainer):
    cfg = compose_train("experiment=cold_start", *trainer, "model.dtype=bfloat16")
    with pytest.raises(ConfigError) as err:
        r1lab.train.train(cfg)
    message = str(err.value)
    assert "model.dtype=bfloat16: the optimiser would step on bf16/fp16 weights" in message
    assert "set model.dtype=float32 (fp32 master weights; trainer.precision=bf16-mixed still computes in bf16)" \
        in message
    assert "or use a trainer=deepspeed_*" in message


def test_weights_cast_to_bf16_by_the_trainer_are_refused(compose_train, nothing_loads):
    with pytest.raises(ConfigError, match="trainer.precision=bf16-true: casts the weights"):
        r1lab.train.train(compose_train("experiment=cold_start", "trainer=ddp", "trainer.precision=bf16-true"))


def test_only_deepspeed_may_keep_bf16_master_weights(compose_train):
    """Every trainer config (and FSDP) with a bf16 model: refused unless DeepSpeed keeps fp32 copies."""
    trainers = [[f"trainer={p.stem}"] for p in sorted((ROOT / "configs" / "trainer").glob("*.yaml"))]
    for overrides in trainers + [["trainer=gpu", "+trainer.strategy=fsdp"]]:
        cfg = compose_train("experiment=cold_start", *overrides, "model.dtype=bfloat16")
        deepspeed = overrides[0].startswith("trainer=deepspeed")
        assert bool(precision_problems(cfg)) != deepspeed, overrides
        if deepspeed:
            check_config(cfg)
