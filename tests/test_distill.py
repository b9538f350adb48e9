"""Distillation: the KD losses against values computed by hand, and DistillModule's teacher (frozen, in eval mode,
out of checkpoints, same vocabulary) on the tiny model."""

import math
import re
from functools import partial

import hydra
import lightning as L
import pytest
import torch
from transformers import AutoModelForCausalLM

from r1lab.data.encode import pad_batch, pad_parts
from r1lab.stages.distill import DistillModule, forward_kl, generalized_jsd, reverse_kl
from r1lab.stages.sft import SFTModule

LOSSES = [forward_kl, reverse_kl, partial(generalized_jsd, beta=0.5), partial(generalized_jsd, beta=0.1)]
ADAMW = partial(torch.optim.AdamW, lr=1e-3)


def kl(a: list[float], b: list[float]) -> float:
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def jsd(p: list[float], q: list[float], beta: float) -> float:
    m = [beta * x + (1 - beta) * y for x, y in zip(p, q)]
    return beta * kl(p, m) + (1 - beta) * kl(q, m)


def logits(*rows: list[float]) -> torch.Tensor:
    """[1, T, V] logits whose softmax at position t is rows[t]."""
    return torch.log(torch.tensor(rows)).unsqueeze(0)


@pytest.mark.parametrize("p, q", [
    ([0.2, 0.8], [0.6, 0.4]),          # forward 0.2 ln(1/3) + 0.8 ln 2 = 0.3348; reverse 0.6 ln 3 + 0.4 ln 0.5 = 0.3819
    ([0.1, 0.3, 0.6], [0.5, 0.25, 0.25]),
])
def test_losses_by_hand_on_one_token(p, q):
    student, teacher, one = logits(q), logits(p), torch.ones(1, 1)
    assert forward_kl(student, teacher, one).item() == pytest.approx(kl(p, q), rel=1e-5)
    assert reverse_kl(student, teacher, one).item() == pytest.approx(kl(q, p), rel=1e-5)
    for beta in (0.25, 0.5, 0.9):
        assert generalized_jsd(student, teacher, one, beta=beta).item() == pytest.approx(jsd(p, q, beta), rel=1e-4)
    if p == [0.2, 0.8]:
        assert forward_kl(student, teacher, one).item() == pytest.approx(0.33479, abs=1e-5)
        # beta 0.25: m = [0.5, 0.5]; 0.25 (0.2 ln 0.4 + 0.8 ln 1.6) + 0.75 (0.6 ln 1.2 + 0.4 ln 0.8) = 0.06328
        assert generalized_jsd(student, teacher, one, beta=0.25).item() == pytest.approx(0.06328, abs=1e-5)


def test_temperature_softens_both_and_scales_by_its_square():
    # T = 2: teacher logits [0, ln 4] -> softmax([0, ln 2]) = [1/3, 2/3]; student [0, 0] -> [1/2, 1/2]
    teacher, student, one = torch.tensor([[[0.0, math.log(4.0)]]]), torch.zeros(1, 1, 2), torch.ones(1, 1)
    p, q = [1 / 3, 2 / 3], [0.5, 0.5]
    assert forward_kl(student, teacher, one, temperature=2.0).item() == pytest.approx(4 * kl(p, q), rel=1e-5)
    assert reverse_kl(student, teacher, one, temperature=2.0).item() == pytest.approx(4 * kl(q, p), rel=1e-5)
    assert generalized_jsd(student, teacher, one, temperature=2.0).item() == pytest.approx(4 * jsd(p, q, 0.5), rel=1e-4)


@pytest.mark.parametrize("loss", LOSSES)
def test_mask_keeps_only_its_tokens_and_averages_over_them(loss):
    # token 1 of sequence 0 and token 0 of sequence 1 are masked out and wildly different: they must not count
    student = torch.cat([logits([0.6, 0.4], [0.01, 0.99]), logits([0.99, 0.01], [0.3, 0.7])])   # [2, 2, 2]
    teacher = torch.cat([logits([0.2, 0.8], [0.99, 0.01]), logits([0.01, 0.99], [0.5, 0.5])])
    mask = torch.tensor([[1, 0], [0, 1]])
    one = torch.ones(1, 1)
    kept = [loss(logits([0.6, 0.4]), logits([0.2, 0.8]), one), loss(logits([0.3, 0.7]), logits([0.5, 0.5]), one)]
    expected = sum(kept) / 2
    assert loss(student, teacher, mask).item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss(student, teacher, torch.zeros(2, 2)).item() == 0.0      # no assistant tokens: nothing to learn


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("loss", LOSSES + [partial(generalized_jsd, beta=0.0), partial(generalized_jsd, beta=1.0)])
def test_exactly_zero_when_student_is_teacher(loss, temperature):
    same = torch.randn(2, 5, 7, generator=torch.Generator().manual_seed(0)) * 5
    assert loss(same, same.clone(), torch.ones(2, 5), temperature=temperature).item() == 0.0


def test_chunks_match_the_whole_computation_on_a_sliced_view():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(3, 6, 11, generator=g, requires_grad=True)
    teacher, mask = torch.randn(3, 6, 11, generator=g), torch.rand(3, 5, generator=g) > 0.3
    log_q, log_p = torch.log_softmax(student[:, :-1], -1)[mask], torch.log_softmax(teacher[:, :-1], -1)[mask]
    log_m = torch.log(0.3 * log_p.exp() + 0.7 * log_q.exp())
    whole = {forward_kl: (log_p.exp() * (log_p - log_q)).sum(-1).mean(),
             reverse_kl: (log_q.exp() * (log_q - log_p)).sum(-1).mean(),
             partial(generalized_jsd, beta=0.3): (0.3 * (log_p.exp() * (log_p - log_m)).sum(-1)
                                                  + 0.7 * (log_q.exp() * (log_q - log_m)).sum(-1)).mean()}
    for loss, expected in whole.items():
        chunked = loss(student[:, :-1], teacher[:, :-1], mask, chunk_size=4)     # non-contiguous [3, 5, 11]
        assert chunked.item() == pytest.approx(expected.item(), rel=1e-5) and chunked.item() > 0
        grad, = torch.autograd.grad(chunked, student)
        assert torch.allclose(grad, torch.autograd.grad(expected, student, retain_graph=True)[0], atol=1e-6)


def test_generalized_jsd_end_points_are_the_kls_it_approaches():
    g = torch.Generator().manual_seed(2)
    student, teacher, mask = torch.randn(2, 4, 9, generator=g), torch.randn(2, 4, 9, generator=g), torch.ones(2, 4)
    fwd, rev = forward_kl(student, teacher, mask), reverse_kl(student, teacher, mask)
    assert torch.equal(generalized_jsd(student, teacher, mask, beta=0.0), fwd)
    assert torch.equal(generalized_jsd(student, teacher, mask, beta=1.0), rev)
    eps = 1e-3   # JSD(beta) / beta -> KL(p || q) and JSD(beta) / (1 - beta) -> KL(q || p)
    assert (generalized_jsd(student, teacher, mask, beta=eps) / eps).item() == pytest.approx(fwd.item(), rel=1e-2)
    assert (generalized_jsd(student, teacher, mask, beta=1 - eps) / eps).item() == pytest.approx(rev.item(), rel=1e-2)
    with pytest.raises(ValueError, match="beta"):
        generalized_jsd(student, teacher, mask, beta=1.5)


def toy_batch(vocab: int) -> dict[str, torch.Tensor]:
    """Two right-padded chats of 12 tokens: 5 prompt tokens (label -100), then the answer; row 1 ends in 3 pads."""
    ids = torch.randint(0, vocab, (2, 12), generator=torch.Generator().manual_seed(0))
    labels, attention_mask = ids.clone(), torch.ones_like(ids)
    labels[:, :5] = -100
    labels[1, -3:], attention_mask[1, -3:] = -100, 0
    return {"input_ids": ids, "attention_mask": attention_mask, "labels": labels}


def test_kd_weight_zero_is_plain_sft(tokenizer_dir, teacher_dir):
    sft = SFTModule(str(tokenizer_dir), ADAMW)
    distill = DistillModule(str(tokenizer_dir), ADAMW, teacher_path=str(teacher_dir), kd_weight=0.0)
    sft.configure_model()
    distill.configure_model()
    assert distill.teacher is None     # no teacher loaded, no teacher forward
    batch = toy_batch(sft.model.config.vocab_size)
    (sft_loss, sft_n, _), (loss, n, terms) = sft._loss(batch), distill._loss(batch)
    assert torch.equal(loss, sft_loss) and n == sft_n == 7 + 4 and set(terms) == {"ce"}


def test_kd_term_is_the_configured_loss_on_assistant_tokens(tokenizer_dir, teacher_dir):
    kd_loss = partial(generalized_jsd, beta=0.5)
    module = DistillModule(str(tokenizer_dir), ADAMW, teacher_path=str(teacher_dir), kd_weight=0.25, kd_loss=kd_loss,
                           kd_temperature=2.0)
    module.configure_model()
    assert module.hparams.kd_weight == 0.25 and module.hparams.teacher_path == str(teacher_dir)
    batch = toy_batch(module.model.config.vocab_size)
    loss, _, terms = module._loss(batch)
    teacher = AutoModelForCausalLM.from_pretrained(teacher_dir)
    with torch.no_grad():
        s = module.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        t = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
    expected = generalized_jsd(s, t, batch["labels"][:, 1:] != -100, beta=0.5, temperature=2.0)
    assert terms["kd"].item() == pytest.approx(expected.item(), rel=1e-5) and expected.item() > 0
    assert loss.item() == pytest.approx(0.75 * terms["ce"].item() + 0.25 * terms["kd"].item(), rel=1e-6)
    itself = DistillModule(str(tokenizer_dir), ADAMW, teacher_path=str(tokenizer_dir), kd_weight=0.25, kd_loss=kd_loss)
    itself.configure_model()
    assert itself._loss(batch)[2]["kd"].item() == 0.0           # its own teacher: nothing to distil


@pytest.mark.parametrize("kd_weight", [0.0, 0.25])
def test_a_batch_in_parts_has_the_loss_of_the_rows_padded_together(tokenizer_dir, teacher_dir, kd_weight):
    """Rejection SFT pads its reasoning and its general rows apart (data_modules/rejection.py): the loss and every
    logged term must be the token means of the whole batch, as if the rows were padded together."""
    module = DistillModule(str(tokenizer_dir), ADAMW, teacher_path=str(teacher_dir), kd_weight=kd_weight)
    module.configure_model()
    rows = [{"input_ids": list(range(10, 10 + n)), "labels": [-100] * 4 + list(range(14, 10 + n))} for n in (12, 9, 6)]
    together = module._loss(pad_batch(rows, pad_id=0))
    apart = module._loss(pad_parts(rows, pad_id=0, sizes=[2, 1]))
    assert apart[1] == together[1] == 8 + 5 + 2
    assert apart[0].item() == pytest.approx(together[0].item(), rel=1e-5)
    assert apart[2].keys() == together[2].keys() == ({"ce", "kd"} if kd_weight else {"ce"})
    for name in apart[2]:
        assert apart[2][name].item() == pytest.approx(together[2][name].item(), rel=1e-5)


class TeacherProbe(L.Callback):
    """Records, at every optimizer step, the teacher's mode and gradients next to the student's."""

    def __init__(self):
        self.seen = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.seen.append((pl_module.training, pl_module.teacher.training,
                          any(p.grad is not None for p in pl_module.teacher.parameters()),
                          all(p.grad is not None for p in pl_module.model.parameters())))


def test_teacher_stays_frozen_in_eval_mode_through_training_and_validation(compose_train):
    cfg = compose_train("experiment=distill_kd", "trainer.max_steps=3", "trainer.val_check_interval=1",
                        "trainer.limit_val_batches=1", "data.batch_size=4")
    module = hydra.utils.instantiate(cfg.module)
    module.configure_model()
    module.train()
    assert module.model.training and not module.teacher.training    # Lightning's .train() leaves the teacher alone
    before = {k: v.clone() for k, v in module.teacher.state_dict().items()}
    probe = TeacherProbe()
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=[probe], logger=False, enable_checkpointing=False)
    trainer.fit(module, datamodule=hydra.utils.instantiate(cfg.data))
    assert probe.seen == [(True, False, False, True)] * 3          # validation ran between the steps
    assert all(torch.equal(before[k], v) for k, v in module.teacher.state_dict().items())
    assert {"train/ce", "train/kd", "train/loss", "val/ce", "val/kd", "val/loss"} <= set(trainer.callback_metrics)


def test_checkpoints_leave_the_teacher_out_and_still_load_strictly(tokenizer_dir, teacher_dir):
    module = DistillModule(str(tokenizer_dir), ADAMW, teacher_path=str(teacher_dir), kd_weight=0.5)
    module.configure_model()
    checkpoint = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint["state_dict"] and not any(k.startswith("teacher.") for k in checkpoint["state_dict"])
    module.on_load_checkpoint(checkpoint)
    module.load_state_dict(checkpoint["state_dict"])              # strict


def test_mismatched_vocabularies_fail_before_loading_naming_both(tokenizer_dir, tmp_path):
    other = AutoModelForCausalLM.from_pretrained(tokenizer_dir)
    other.resize_token_embeddings(other.config.vocab_size + 8)
    other.save_pretrained(tmp_path / "teacher")
    pattern = rf"(?s){re.escape(str(tmp_path / 'teacher'))}.*{re.escape(str(tokenizer_dir))}"
    with pytest.raises(ValueError, match=pattern):
        DistillModule(str(tokenizer_dir), ADAMW, teacher_path=str(tmp_path / "teacher"), kd_weight=0.5)
    with pytest.raises(ValueError, match="teacher_path"):
        DistillModule(str(tokenizer_dir), ADAMW, kd_weight=0.5)
