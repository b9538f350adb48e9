"""Distillation: a small student trained on what a larger teacher produced (R1 sec. 2.4; GKD, Agarwal et al. 2024).

R1 distilled by SFT alone: the student fine-tuned on the samples stage 3 kept, which is `DistillModule` with
`kd_weight=0` (SFTModule exactly, no teacher loaded). With `kd_weight > 0` a frozen teacher scores the same tokens and
loss = (1 - kd_weight) * CE + kd_weight * KD, where KD is a divergence between the teacher's and the student's
next-token distributions on the assistant tokens (`kd_loss`: forward_kl, reverse_kl or generalized_jsd).
Run it with `python -m r1lab.train experiment=distill` (the teacher: the stage-3 model of `make demo`).

Simplified: off-policy only (the tokens are the data's; GKD's on-policy student samples are not generated), and
teacher and student must share one tokenizer. Shapes: N sequences, T positions, V vocabulary; p is the teacher's
and q the student's distribution, both softmax(logits / temperature).
"""

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from transformers import AutoConfig

from r1lab.infra.hf import check_model_dir, load_model
from r1lab.infra.peft import LoraConfig
from r1lab.stages.sft import Loss, SFTModule


def _kl(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """KL(a || b) per row from log-probabilities: [C, V], [C, V] -> [C]; exactly 0 where log_a == log_b."""
    return (log_a.exp() * (log_a - log_b)).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log(beta * p + (1 - beta) * q) per element, for 0 < beta < 1: written around the larger of p and q, so it
    never overflows and is exactly log p where p == q.

    >>> log_p, log_q = torch.log(torch.tensor([0.2, 0.8])), torch.log(torch.tensor([0.6, 0.4]))
    >>> _log_mixture(log_p, log_q, 0.25).exp()
    tensor([0.5000, 0.5000])
    """
    d = log_p - log_q
    ratio_m1 = torch.expm1(torch.where(d >= 0, -d, d))   # q/p - 1 where p >= q, p/q - 1 elsewhere: in (-1, 0]
    return torch.where(d >= 0, log_p + torch.log1p((1 - beta) * ratio_m1), log_q + torch.log1p(beta * ratio_m1))


def _masked_token_mean(divergence: Callable, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                       mask: torch.Tensor, temperature: float, chunk_size: int) -> torch.Tensor:
    """temperature^2 * mean over the tokens in `mask` of divergence(log q, log p) ([C, V], [C, V] -> [C]).

    Only masked positions are gathered, `chunk_size` rows at a time, so the one fp32 [C, V] chunk is the only copy
    (the logits may be a non-contiguous slice such as `logits[:, :-1]`, which a reshape would copy whole).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: teacher and student must share one tokenizer")
    rows, cols = mask.nonzero(as_tuple=True)                                          # [M], [M]
    total = torch.zeros((), device=student_logits.device)
    for r, c in zip(rows.split(chunk_size), cols.split(chunk_size)):
        log_q = F.log_softmax(student_logits[r, c].float() / temperature, dim=-1)    # [C, V]
        log_p = F.log_softmax(teacher_logits[r, c].float() / temperature, dim=-1)    # [C, V]
        total = total + divergence(log_q, log_p).sum()
    return total * temperature**2 / max(rows.numel(), 1)


def forward_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """KL(p || q), the classic KD loss (Hinton et al. 2015): mode-covering, the student spreads over the teacher's
    support. logits: [N, T, V], mask: [N, T] -> scalar mean over masked tokens, times temperature^2.

    >>> q, p = torch.tensor([[[0.6, 0.4]]]).log(), torch.tensor([[[0.2, 0.8]]]).log()   # [1, 1, 2]: one token
    >>> round(forward_kl(q, p, torch.ones(1, 1)).item(), 4)   # 0.2 ln(0.2 / 0.6) + 0.8 ln(0.8 / 0.4)
    0.3348
    """
    return _masked_token_mean(lambda log_q, log_p: _kl(log_p, log_q), student_logits, teacher_logits, mask,
                              temperature, chunk_size)


def reverse_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
               temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """KL(q || p): mode-seeking, the student concentrates on what the teacher finds likely (MiniLLM, GKD).
    Shapes and scaling as `forward_kl`."""
    return _masked_token_mean(_kl, student_logits, teacher_logits, mask, temperature, chunk_size)


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                    beta: float = 0.5, temperature: float = 1.0, chunk_size: int = 1024) -> torch.Tensor:
    """GKD's generalised Jensen-Shannon divergence, with m = beta * p + (1 - beta) * q:

        JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m)       for 0 < beta < 1 (0.5: the usual JSD)

    JSD(beta) itself vanishes as beta -> 0 or 1, but JSD(beta) / beta -> KL(p || q) and JSD(beta) / (1 - beta) ->
    KL(q || p); at the end points this returns those limits, forward_kl (beta = 0) and reverse_kl (beta = 1), so the
    value jumps there. Shapes and temperature^2 scaling as `forward_kl`.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"generalized_jsd: beta must be in [0, 1], got {beta}")
    if beta in (0.0, 1.0):
        kl_loss = forward_kl if beta == 0.0 else reverse_kl
        return kl_loss(student_logits, teacher_logits, mask, temperature, chunk_size)

    def jsd(log_q: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:                 # [C, V], [C, V] -> [C]
        log_m = _log_mixture(log_p, log_q, beta)
        return beta * _kl(log_p, log_m) + (1 - beta) * _kl(log_q, log_m)

    return _masked_token_mean(jsd, student_logits, teacher_logits, mask, temperature, chunk_size)


def check_same_vocab(student_path: str, teacher_path: str) -> None:
    """Fail before any weights load unless the two models' output vocabularies have the same size."""
    student, teacher = (AutoConfig.from_pretrained(str(check_model_dir(p, ("config", "weights")))).vocab_size
                        for p in (student_path, teacher_path))  # a teacher needs no tokenizer: it reads the student's
    if student != teacher:
        raise ValueError(f"teacher {teacher_path} has a vocabulary of {teacher} tokens and student {student_path} one "
                         f"of {student}: distillation compares next-token distributions, so both need one tokenizer")


class DistillModule(SFTModule):
    """SFTModule plus, when kd_weight > 0, a frozen teacher: loss = (1 - kd_weight) * CE + kd_weight * KD.

    Logs train/ce, train/kd (with a teacher) and train/loss, and the same under val/; `kd_loss` is one of this
    module's divergences as a Hydra `_partial_` (e.g. generalized_jsd with its beta).
    """

    def __init__(self, model_path: str, optimizer: partial, teacher_path: str | None = None, kd_weight: float = 0.0,
                 kd_loss: Callable[..., torch.Tensor] = forward_kl, kd_temperature: float = 1.0,
                 scheduler: partial | None = None, dtype: str = "float32", gradient_checkpointing: bool = False,
                 peft: LoraConfig | None = None):
        if not 0.0 <= kd_weight <= 1.0:
            raise ValueError(f"kd_weight must be in [0, 1], got {kd_weight}")
        if kd_weight > 0 and teacher_path is None:
            raise ValueError(f"kd_weight={kd_weight} needs a teacher: set module.teacher_path")
        super().__init__(model_path, optimizer, scheduler, dtype, gradient_checkpointing, peft)
        if kd_weight > 0:
            check_same_vocab(model_path, teacher_path)
        self.teacher = None

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        if self.hparams.kd_weight > 0:
            self.teacher = load_model(self.hparams.teacher_path, self.hparams.dtype).eval().requires_grad_(False)

    def train(self, mode: bool = True) -> "DistillModule":
        """Lightning switches the module to training mode (e.g. after validation); the teacher stays in eval mode."""
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    def _part_loss(self, part: dict[str, torch.Tensor]) -> Loss:
        out = self.model(input_ids=part["input_ids"], attention_mask=part["attention_mask"], labels=part["labels"])
        mask = part["labels"][:, 1:] != -100                                             # [N, T]: assistant tokens
        if self.teacher is None:
            return out.loss, mask.sum(), {"ce": out.loss.detach()}
        with torch.no_grad():
            teacher_logits = self.teacher(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        kd = self.hparams.kd_loss(out.logits[:, :-1], teacher_logits[:, :-1], mask,    # [N, T, V] each
                                  temperature=self.hparams.kd_temperature)
        w = self.hparams.kd_weight
        return (1 - w) * out.loss + w * kd, mask.sum(), {"ce": out.loss.detach(), "kd": kd.detach()}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Keep the frozen teacher (often far larger than the student) out of checkpoints; it reloads from its path."""
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("teacher.")}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self.teacher is not None:  # strict loading expects every key, so give back the teacher's own weights
            checkpoint["state_dict"].update({f"teacher.{k}": v for k, v in self.teacher.state_dict().items()})
