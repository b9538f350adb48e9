"""Rollout engines: sample completions from a policy (transformers or vLLM)."""
