"""Trainer configs and DeepSpeed ZeRO: every trainer config composes and instantiates, every DeepSpeed config is one
DeepSpeed parses and agrees with the trainer it runs under, `check_deepspeed_config` catches what disagrees, and the
ZeRO code paths (loading under zero.Init, gathered generation, micro-batch accumulation, the consolidated HF export,
ZeRO checkpoint -> HF conversion) run on real DeepSpeed ZeRO-2/3 on CPU. The GPU tests run the same stages under
`trainer=deepspeed_zero3` on CUDA and skip here."""

import json
import os
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from r1lab.infra.deepspeed import check_config, check_deepspeed_config, deepspeed_config_of, world_size_of
from r1lab.infra.utils import ROOT

TRAINERS = sorted(p.stem for p in (ROOT / "configs" / "trainer").glob("*.yaml"))
DEEPSPEED = [t for t in TRAINERS if t.startswith("deepspeed")]
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_trainer_configs_are_all_there():
    assert {"cpu", "gpu", "ddp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload"} <= set(TRAINERS)


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_config_instantiates(compose_train, trainer):
    """CPU configs build a Trainer as they are; GPU and DeepSpeed ones compose, and their Trainer builds with the
    accelerator switched to CPU (DeepSpeed's strategy is built too; Lightning refuses it only when fit starts)."""
    cfg = compose_train(f"trainer={trainer}")
    OmegaConf.resolve(cfg.trainer)
    if cfg.trainer.get("accelerator") == "gpu":
        cfg.trainer.accelerator = "cpu"
    trainer_obj = hydra.utils.instantiate(cfg.trainer, logger=False)
    assert trainer_obj.max_epochs == cfg.trainer.max_epochs
    if trainer in DEEPSPEED:
        from lightning.pytorch.strategies import DeepSpeedStrategy

        strategy = trainer_obj.strategy
        assert isinstance(strategy, DeepSpeedStrategy) and isinstance(strategy.config, dict)
        assert strategy.zero_stage_3 == (trainer != "deepspeed_zero2")


@pytest.mark.parametrize("trainer", DEEPSPEED)
def test_deepspeed_config_parses_and_agrees_with_the_trainer(compose_train, trainer):
    from deepspeed.runtime.config import DeepSpeedConfig

    for experiment, clip in (("cold_start", "trainer.gradient_clip_val"), ("r1_zero", "module.max_grad_norm")):
        cfg = compose_train(f"trainer={trainer}", f"experiment={experiment}", "trainer.accumulate_grad_batches=2")
        check_config(cfg)
        ds = deepspeed_config_of(cfg)
        ds["gradient_accumulation_steps"] = cfg.trainer.accumulate_grad_batches  # what Lightning adds at setup
        parsed = DeepSpeedConfig(ds, mpu=None)                                     # world size 1: no process group
        assert parsed.train_micro_batch_size_per_gpu == cfg.data.batch_size
        assert parsed.train_batch_size == cfg.data.batch_size * 2
        assert parsed.gradient_clipping == OmegaConf.select(cfg, clip) == 1.0
        assert parsed.bfloat16_config.enabled and cfg.trainer.precision == "bf16-mixed"
        assert parsed.zero_optimization_stage == (2 if trainer == "deepspeed_zero2" else 3)
        offload = trainer.endswith("offload")
        assert (parsed.zero_config.offload_param is not None) == offload
        assert (parsed.zero_config.offload_optimizer is not None) == offload


def test_every_experiment_agrees_with_the_deepspeed_configs(compose_train, experiment):
    """Batch size, precision and clipping come from the experiment (the configs differ only in ZeRO settings)."""
    check_config(compose_train(f"experiment={experiment}", "trainer=deepspeed_zero3"))


TRAINER = {"precision": "bf16-mixed", "gradient_clip_val": 1.0, "accumulate_grad_batches": 2, "devices": 4,
           "num_nodes": 2}
GOOD = {"train_micro_batch_size_per_gpu": 8, "bf16": {"enabled": True}, "gradient_clipping": 1.0,
        "zero_optimization": {"stage": 3}}


@pytest.mark.parametrize("change, trainer_change, match", [
    ({"gradient_accumulation_steps": 2}, {}, "Lightning sets it"),
    ({"train_batch_size": 64}, {}, r"x world size 8 = 128"),
    ({"bf16": {"enabled": False}}, {}, "bf16.enabled=False but trainer.precision=bf16-mixed"),
    ({}, {"precision": "32-true"}, "bf16.enabled=True but trainer.precision=32-true"),
    ({"fp16": {"enabled": True}}, {}, "both enabled"),
    ({"gradient_clipping": 0.5}, {}, "trainer.gradient_clip_val=1.0"),
    ({}, {"gradient_clip_algorithm": "value"}, "by norm only"),
    ({"zero_optimization": {"stage": 2, "offload_param": {"device": "cpu"}}}, {}, "offload_param needs ZeRO stage 3"),
    ({"optimizer": {"type": "AdamW"}}, {}, "module.optimizer"),
    ({"train_micro_batch_size_per_gpu": 0}, {}, "positive integer"),
])
def test_check_deepspeed_config_catches(change, trainer_change, match):
    check_deepspeed_config({**GOOD, "train_batch_size": 128}, TRAINER)
    with pytest.raises(ValueError, match=match):
        check_deepspeed_config({**GOOD, **change}, {**TRAINER, **trainer_change})


def test_manual_optimisation_clips_with_the_module_norm():
    """GRPO clips in its own loop; Lightning's clip_gradients does nothing under DeepSpeed, so DeepSpeed must."""
    check_deepspeed_config(GOOD, {**TRAINER, "gradient_clip_val": None}, max_grad_norm=1.0)
    with pytest.raises(ValueError, match="module.max_grad_norm=0.5"):
        check_deepspeed_config(GOOD, {**TRAINER, "gradient_clip_val": None}, max_grad_norm=0.5)


def test_world_size_of():
    assert world_size_of({"devices": 4, "num_nodes": 2}) == 8
    assert world_size_of({"devices": [0, 1], "num_nodes": 1}) == 2
    assert world_size_of({"devices": "auto", "num_nodes": 1}) is None


def test_train_refuses_a_disagreeing_deepspeed_config_before_loading(compose_train):
    from r1lab.train import train

    cfg = compose_train("experiment=cold_start", "trainer=deepspeed_zero3", "trainer.precision=32-true")
    with pytest.raises(ValueError, match="trainer.precision=32-true"):
        train(cfg)


def test_zero_paths_on_cpu(compose_train, tmp_path):
    """Real DeepSpeed on its CPU accelerator (gloo, world size 1), through Lightning's DeepSpeedStrategy minus its CUDA
    checks: SFT under ZeRO-2 and ZeRO-3 and GRPO under ZeRO-3 (KL reference, refreshed) each train 2 steps and write
    Lightning's ZeRO checkpoint and the HF export; the checkpoint converts to an HF directory equal to the export."""
    common = ["trainer.accelerator=cpu", "trainer.devices=1", "trainer.precision=32-true",
              "trainer.strategy.config.bf16.enabled=false",
              "trainer.strategy._target_=deepspeed_cpu_run.CPUDeepSpeedStrategy", "logger=csv", "trainer.max_steps=2",
              "trainer.limit_val_batches=1", "trainer.val_check_interval=2", "trainer.check_val_every_n_epoch=null",
              "trainer.max_epochs=-1", "callbacks.model_checkpoint.every_n_train_steps=2"]
    grpo = ["module.sampling.n=4", "module.sampling.max_new_tokens=12", "data.batch_size=2",
            "data.val_batch_size=4",
            "module.kl_coef=0.01", "module.ref_refresh_steps=1", "module.micro_batch_size=3", "module.mu=2",
            "+module.rewards.length.fn._target_=deepspeed_cpu_run.length_reward", "+module.rewards.length.fn._partial_=true"]
    runs = {"sft_zero2": ["experiment=cold_start", "trainer=deepspeed_zero2", "data.batch_size=4"],
            "sft_zero3": ["experiment=cold_start", "trainer=deepspeed_zero3", "data.batch_size=4"],
            "grpo_zero3": ["experiment=r1_zero", "trainer=deepspeed_zero3", *grpo]}
    specs = []
    for name, overrides in runs.items():
        cfg = compose_train(*overrides, *common)
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / name)
            del cfg["hydra"]  # the run needs no Hydra runtime: its one `${hydra:...}` is set above
        OmegaConf.save(cfg, tmp_path / f"{name}.yaml")
        specs.append([name, str(tmp_path / f"{name}.yaml"), cfg.model.path])
    path = os.pathsep.join([str(ROOT / "src"), str(ROOT), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(Path(__file__).parent / "deepspeed_cpu_run.py"), json.dumps(specs),
                           str(tmp_path / "result.json")], env={**os.environ, "PYTHONPATH": path},
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    # GRPO's hand-accumulated micro-batches give the whole batch's update under ZeRO-2 and ZeRO-3
    assert all(diff < 1e-6 for diff in result["accumulation"].values()), result["accumulation"]
    # load_model under zero.Init partitions the tiny model and loads its real weights; gathered generation and the
    # gathered weights vLLM would receive equal the plain model's
    zero3 = result["zero3"]
    assert zero3["partitioned"] and zero3["load_diff"] == 0 and zero3["generation_equal"], zero3
    assert zero3["vllm_sync_diff"] == 0
    for run in result["runs"]:
        assert run["export_vs_checkpoint"] == 0, run      # ZeRO checkpoint -> HF == the end-of-stage export
        assert run["export_vs_initial"] > 0, run          # and the export holds trained weights, gathered
        assert (tmp_path / run["name"] / "model" / ".complete").is_file()
        assert all(torch.isfinite(torch.tensor(v)) for v in run["metrics"].values())


# ---- on a CUDA GPU ----------------------------------------------------------------------------------------------
def gpu_run(compose_train, tmp_path, *overrides: str):
    from transformers import AutoModelForCausalLM

    from r1lab.convert import zero_checkpoint_to_hf
    from r1lab.train import train

    cfg = compose_train(*overrides, "trainer.devices=1", "logger=csv", "trainer.max_steps=2",
                        "trainer.limit_val_batches=1", "trainer.val_check_interval=2",
                        "trainer.check_val_every_n_epoch=null", "trainer.max_epochs=-1",
                        "callbacks.model_checkpoint.every_n_train_steps=2")
    metrics = train(cfg)
    assert metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    export = tmp_path / "run" / "model"
    model = AutoModelForCausalLM.from_pretrained(export)          # the export reloads as a normal HF model
    assert all(p.numel() > 0 and torch.isfinite(p).all() for p in model.parameters())
    converted = zero_checkpoint_to_hf(tmp_path / "run" / "checkpoints" / "last.ckpt", cfg.model.path,
                                      tmp_path / "converted")
    reloaded = AutoModelForCausalLM.from_pretrained(converted)
    for (name, a), (_, b) in zip(model.named_parameters(), reloaded.named_parameters()):
        # the export holds the bf16 weights DeepSpeed trained with; the checkpoint the fp32 masters
        torch.testing.assert_close(a.float(), b.float(), atol=1e-2, rtol=1e-2, msg=name)
    return metrics


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("trainer", DEEPSPEED)
def test_sft_deepspeed_gpu(compose_train, tmp_path, trainer):
    gpu_run(compose_train, tmp_path, "experiment=cold_start", f"trainer={trainer}", "data.batch_size=4")


@pytest.mark.gpu
@needs_gpu
def test_grpo_zero3_gpu(compose_train, tmp_path):
    gpu_run(compose_train, tmp_path, "experiment=r1_zero", "trainer=deepspeed_zero3", "module.sampling.n=4",
            "module.sampling.max_new_tokens=16", "data.batch_size=4", "data.val_batch_size=8", "module.kl_coef=0.01",
            "module.micro_batch_size=8", "module.log_completions_every=0")
