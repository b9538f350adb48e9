import pytest
import torch

from r1lab.infra.optim import warmup_cosine


def lrs(total_steps: int, **kw) -> list[float]:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = warmup_cosine(opt, total_steps, **kw)
    out = []
    for _ in range(total_steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedule_steps_stops_partway_down_the_decay():
    full = lrs(15, warmup_steps=2, min_lr_ratio=0.0)
    cut = lrs(10, warmup_steps=2, min_lr_ratio=0.0, schedule_steps=15)
    assert cut == full[:10]                          # the same curve, stopped early
    assert cut[-1] > 0.2 and lrs(10, warmup_steps=2, min_lr_ratio=0.0)[-1] < 0.05


def test_schedule_shorter_than_the_run_is_refused():
    with pytest.raises(ValueError, match="schedule_steps=5"):
        lrs(10, schedule_steps=5)
