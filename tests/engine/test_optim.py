import math

import pytest
import torch
from torch import nn

from convattn.engine.optim import WarmupSchedule, build_optimizer, param_groups_no_decay
from convattn.exceptions import ConfigError


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.gamma = nn.Parameter(torch.zeros(1, 4, 1, 1))  # residual gate, 4-D but named gamma
        self.fc = nn.Linear(4, 2)


def test_no_decay_on_norms_biases_and_gammas():
    net = _Net()
    net.fc.weight.requires_grad_(False)
    decay, no_decay = param_groups_no_decay(net.named_parameters(), 0.1)
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert ids(decay["params"]) == {id(net.conv.weight)}
    assert ids(no_decay["params"]) == ids([net.conv.bias, net.bn.weight, net.bn.bias, net.gamma, net.fc.bias])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0


def test_build_optimizer_kinds_and_errors():
    net = _Net()
    sgd = build_optimizer(net.named_parameters(), name="sgd", lr=0.1, momentum=0.9, weight_decay=1e-4)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]
    adamw = build_optimizer(net.named_parameters(), name="adamw", lr=1e-3, momentum=0.8)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["betas"] == (0.8, 0.999)
    with pytest.raises(ConfigError, match="adam"):
        build_optimizer(net.named_parameters(), name="adam", lr=0.1)
    for p in net.parameters():
        p.requires_grad_(False)
    with pytest.raises(ConfigError, match="frozen"):
        build_optimizer(net.named_parameters(), name="sgd", lr=0.1)


def _lrs(steps, **kw):
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=2.0)
    sched = WarmupSchedule(opt, **kw)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_warmup_then_cosine_per_step():
    lrs = _lrs(10, total_steps=10, warmup_steps=4, schedule="cosine", min_lr_ratio=0.1)
    assert lrs[:4] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    for t in range(4, 10):
        s = (t - 4) / 6
        assert lrs[t] == pytest.approx(2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s))))


def test_step_and_constant():
    assert _lrs(7, total_steps=7, schedule="step", step_size=3, gamma=0.5) == pytest.approx([2, 2, 2, 1, 1, 1, 0.5])
    assert _lrs(3, total_steps=3, warmup_steps=2, schedule="constant") == pytest.approx([1, 2, 2])
