"""r1lab: DeepSeek-R1's training pipeline as a Lightning + Hydra experiment template."""

__version__ = "0.1.0"
