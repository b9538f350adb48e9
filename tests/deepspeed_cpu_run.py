"""Real DeepSpeed ZeRO on CPU, run by tests/test_deepspeed.py in a subprocess (it opens a gloo process group).

Lightning's DeepSpeedStrategy refuses anything but CUDA in two checks; `CPUDeepSpeedStrategy` below skips just those
and passes DeepSpeed the process's rank instead of a CUDA device index, so DeepSpeed runs on its CPU accelerator.
The rest is the real code path: configure_model under `deepspeed.zero.Init`, the DeepSpeed engine and its ZeRO
optimizer, Lightning's ZeRO checkpoint directory, the HF export callback, GRPO's gathered generation.

    python tests/deepspeed_cpu_run.py <a JSON list of [name, config.yaml]> <result.json>

Each config is a composed train config (`trainer=deepspeed_*`, fp32); the script also checks micro-batch
accumulation on a bare engine and ZeRO-3 loading/generation on the tiny model, then writes what it measured.
"""

import json
import os
import sys
import time

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's DeepSpeedStrategy without its CUDA-only checks (tests only)."""

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)

    def setup_distributed(self) -> None:
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        import deepspeed

        engine, optimizer, _, _ = deepspeed.initialize(
            args=None, config=self.config, model=model, optimizer=optimizer, lr_scheduler=lr_scheduler,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()), dist_init_required=False)
        return engine, optimizer


def length_reward(completions: list, **_) -> list[float]:
    """A reward with variance even for a random-init model's completions, so GRPO's update is not zero."""
    return [len(c) / 100 for c in completions]


def max_diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def accumulation(stage: int) -> float:
    """Two optimiser steps of two hand-accumulated micro-batches (as GRPO does) vs of one whole batch, SGD."""
    import deepspeed
    import torch

    from r1lab.infra.deepspeed import full_state_dict, start_micro_batch

    deltas = []
    for split in (False, True):
        torch.manual_seed(0)
        cfg = {"train_micro_batch_size_per_gpu": 4, "gradient_accumulation_steps": 1, "gradient_clipping": 0.0,
               "zero_optimization": {"stage": stage, "stage3_param_persistence_threshold": 0},
               "zero_allow_untested_optimizer": True}
        with deepspeed.zero.Init(enabled=stage == 3, config_dict_or_path=cfg):
            model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                                          config=cfg, model_parameters=list(model.parameters()))
        before = full_state_dict(model)
        for step in range(2):
            x = torch.randn(4, 8, generator=torch.Generator().manual_seed(step))
            parts = [x[:2], x[2:]] if split else [x]
            for i, part in enumerate(parts):
                start_micro_batch(engine, last=i == len(parts) - 1)
                engine.backward(model(part).pow(2).sum())
            engine.step()
        after = full_state_dict(model)
        deltas.append({k: after[k] - before[k] for k in after})
    return max_diff(*deltas)


def zero3_model_checks(model_dir: str) -> dict:
    """Load the tiny model under zero.Init (as configure_model does under ZeRO-3) and compare with a plain load."""
    import deepspeed

    from r1lab.infra.deepspeed import full_state_dict, gathered, gathered_for_generation, is_zero3
    from r1lab.infra.hf import load_model, load_tokenizer
    from r1lab.maths.formats import render_r1_zero
    from r1lab.rollout.engine import HFRollout, SamplingConfig
    from r1lab.rollout.vllm_engine import named_weights

    plain = load_model(model_dir)
    cfg = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1, "zero_optimization": {"stage": 3}}
    with deepspeed.zero.Init(config_dict_or_path=cfg):
        sharded = load_model(model_dir)
    tokenizer = load_tokenizer(model_dir)
    prompts, sampling = [render_r1_zero("What is 2 + 3?"), render_r1_zero("What is 7 - 4?")], SamplingConfig(
        n=2, temperature=0.0, max_new_tokens=12)
    want = [[c.token_ids for c in g] for g in HFRollout(plain, tokenizer).generate(prompts, sampling)]
    with gathered_for_generation(sharded):
        got = [[c.token_ids for c in g] for g in HFRollout(sharded, tokenizer).generate(prompts, sampling)]
    with gathered(sharded):
        synced = {k: v.clone() for k, v in named_weights(sharded)}
    empty_outside = all(p.numel() == 0 for p in sharded.parameters())
    return {"partitioned": is_zero3(sharded) and empty_outside,
            "load_diff": max_diff(full_state_dict(sharded), full_state_dict(plain)),
            "generation_equal": got == want,
            "vllm_sync_diff": max_diff(synced, dict(named_weights(plain)))}


def fit(name: str, config_path: str) -> dict:
    from omegaconf import OmegaConf
    from safetensors.torch import load_file

    from r1lab.convert import zero_checkpoint_to_hf
    from r1lab.train import train

    cfg = OmegaConf.load(config_path)
    start = time.perf_counter()
    metrics = train(cfg)
    run = cfg.paths.output_dir
    converted = zero_checkpoint_to_hf(f"{run}/checkpoints/last.ckpt", cfg.model.path, f"{run}/converted")
    export, initial = load_file(f"{run}/model/model.safetensors"), load_file(f"{cfg.model.path}/model.safetensors")
    return {"name": name, "seconds": time.perf_counter() - start, "metrics": metrics,
            "export_vs_checkpoint": max_diff(load_file(f"{converted}/model.safetensors"), export),
            "export_vs_initial": max_diff(export, initial)}


def main() -> None:
    runs, out = json.loads(sys.argv[1]), sys.argv[2]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.update(MASTER_ADDR="127.0.0.1", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    os.environ.setdefault("MASTER_PORT", "29531")
    import deepspeed

    deepspeed.init_distributed("gloo")
    result = {"accumulation": {stage: accumulation(stage) for stage in (2, 3)}}
    result["zero3"] = zero3_model_checks(runs[0][2])
    result["runs"] = [fit(name, path) for name, path, _ in runs]
    with open(out, "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
