"""Convert a DeepSpeed ZeRO checkpoint into a Hugging Face model directory (`r1lab-convert`):

    python -m r1lab.convert <run>/checkpoints/last.ckpt <out dir> --model-dir <the run's model.path>

A ZeRO run's `last.ckpt` is a directory of partitioned states; this writes the fp32 weights as a normal
`save_pretrained` directory, with the architecture and tokenizer of `--model-dir`.
"""

import argparse
from pathlib import Path

import torch
import transformers

from r1lab.infra.hf import check_model_dir, load_tokenizer, save_pretrained_atomic


def zero_checkpoint_state_dict(checkpoint_dir: str | Path, prefix: str = "model.", tag: str | None = None
                               ) -> dict[str, torch.Tensor]:
    """The fp32 weights of a DeepSpeed ZeRO (stage 1-3) checkpoint directory, keys under `prefix` with it removed
    (a LightningModule keeps its HF model in `self.model`, so Lightning's keys read `model.<hf name>`)."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    state = get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def zero_checkpoint_to_hf(checkpoint_dir: str | Path, model_dir: str | Path, out_dir: str | Path,
                          prefix: str = "model.", tag: str | None = None) -> Path:
    """Write a `save_pretrained` directory from a ZeRO checkpoint: architecture and tokenizer from `model_dir` (the
    run's `model.path`), weights (fp32) from `checkpoint_dir` (e.g. `<run>/checkpoints/last.ckpt`)."""
    model_dir = check_model_dir(model_dir)
    state = zero_checkpoint_state_dict(checkpoint_dir, prefix, tag)
    if not state:
        raise ValueError(f"no weights under the prefix {prefix!r} in {checkpoint_dir}: pass --prefix")
    config = transformers.AutoConfig.from_pretrained(model_dir)
    cls = getattr(transformers, (config.architectures or ["AutoModelForCausalLM"])[0])
    model = cls.from_config(config) if cls.__name__.startswith("Auto") else cls(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    loaded = {p.data_ptr() for k, p in model.state_dict().items() if k in state}
    missing = [k for k in missing if model.state_dict()[k].data_ptr() not in loaded]  # tied to a loaded weight
    if missing or unexpected:
        raise ValueError(f"checkpoint and {model_dir} disagree: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return save_pretrained_atomic(model, load_tokenizer(model_dir), out_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert a DeepSpeed ZeRO checkpoint directory (e.g. "
                                     "<run>/checkpoints/last.ckpt) into a Hugging Face save_pretrained directory.")
    parser.add_argument("checkpoint_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--model-dir", required=True, help="the run's model.path: architecture and tokenizer")
    parser.add_argument("--prefix", default="model.", help="the LightningModule attribute holding the HF model")
    parser.add_argument("--tag", default=None, help="checkpoint tag (default: the `latest` file's)")
    args = parser.parse_args(argv)
    out = zero_checkpoint_to_hf(args.checkpoint_dir, args.model_dir, args.out_dir, args.prefix, args.tag)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
