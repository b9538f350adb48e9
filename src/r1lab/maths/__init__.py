"""Maths and scoring: pure tensor functions (GRPO, distillation), rewards, filters, metrics, judges and the response formats."""
