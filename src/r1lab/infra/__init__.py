"""Infrastructure: loading and saving models, DeepSpeed, checkpoints and resume, guards, config checks, callbacks."""
