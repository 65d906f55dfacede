"""Optimisers, per-step learning-rate schedules and mixed precision (autocast, loss scaling).

Weight decay is never applied to normalisation weights, biases and residual gates:
every 1-D parameter and every parameter whose name contains ``gamma`` goes into a
group with ``weight_decay=0`` (as timm and the ResNet training recipes do).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn
from torch.optim.lr_scheduler import LRScheduler

from ..exceptions import ConfigError

__all__ = ["param_groups_no_decay", "build_optimizer", "WarmupSchedule", "mixed_precision"]


def param_groups_no_decay(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float
) -> list[dict]:
    """Split parameters into a decayed group and a ``weight_decay=0`` group.

    A parameter skips decay when it is 1-D or lower (norm weights, biases, scalar
    gates) or its name contains ``gamma``. Frozen parameters (``requires_grad``
    false) are left out.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8))
        >>> [len(g["params"]) for g in param_groups_no_decay(m.named_parameters(), 1e-4)]
        [1, 3]
    """
    decay, no_decay = [], []
    for name, p in named_params:
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or "gamma" in name.lower():
            no_decay.append(p)
        else:
            decay.append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(
    named_params: Iterable[tuple[str, nn.Parameter]],
    *,
    name: str,
    lr: float,
    momentum: float = 0.9,
    nesterov: bool = True,
    weight_decay: float = 0.0,
    lr_mult: Mapping[str, float] | None = None,
    groups: Mapping[str, Iterable[nn.Parameter]] | None = None,
) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or AdamW over ``named_params`` with the no-decay split.

    ``lr_mult`` scales the learning rate of named parameter ``groups`` (a model's
    ``param_groups()``, e.g. ``{"localization": 0.1}`` for a spatial transformer's
    localisation network, as in the STN paper); parameters outside them use ``lr``.
    Each optimiser group records its ``"lr_mult"``; the first groups are the ones at
    multiplier 1 (when there are any), so ``param_groups[0]["lr"]`` is the base lr.

    Example:
        >>> net = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
        >>> opt = build_optimizer(net.named_parameters(), name="adamw", lr=0.01,
        ...                       lr_mult={"head": 0.1}, groups={"head": net[1].parameters()})
        >>> [(g["lr"], len(g["params"])) for g in opt.param_groups]
        [(0.01, 1), (0.01, 1), (0.001, 1), (0.001, 1)]
    """
    named_params = list(named_params)
    lr_mult = dict(lr_mult or {})
    groups = {k: list(v) for k, v in (groups or {}).items()}
    unknown = sorted(set(lr_mult) - set(groups))
    if unknown:
        raise ConfigError(
            f"build_optimizer: lr_mult names unknown parameter group(s) {unknown}; the model has {sorted(groups) or 'none'}"
        )
    mult_of: dict[int, float] = {}
    for gname, mult in lr_mult.items():
        for p in groups[gname]:
            if id(p) in mult_of and mult_of[id(p)] != mult:
                raise ConfigError(f"build_optimizer: a parameter of group {gname!r} has two lr multipliers")
            mult_of[id(p)] = float(mult)
    mults = sorted({mult_of.get(id(p), 1.0) for _, p in named_params}, key=lambda m: (m != 1.0, m))
    out = []
    for m in mults:
        subset = [(n, p) for n, p in named_params if mult_of.get(id(p), 1.0) == m]
        for g in param_groups_no_decay(subset, weight_decay):
            if g["params"]:
                out.append({**g, "lr": lr * m, "lr_mult": m})
    if not out:
        raise ConfigError("build_optimizer: no trainable parameters (every parameter is frozen)")
    name = name.lower()
    if name == "sgd":
        return torch.optim.SGD(out, lr=lr, momentum=momentum, nesterov=nesterov and momentum > 0)
    if name == "adamw":
        return torch.optim.AdamW(out, lr=lr, betas=(momentum, 0.999))
    raise ConfigError(f"build_optimizer: optimizer must be 'sgd' or 'adamw', got {name!r}")


class WarmupSchedule(LRScheduler):
    """Linear warm-up then cosine, step or constant decay, stepped once per optimiser step.

    The factor applied to each group's base lr at step ``t`` is ``(t + 1) / warmup``
    during warm-up, then:

    - cosine: ``m + (1 - m) * (1 + cos(pi * s / S)) / 2`` with ``m = min_lr / lr``,
      ``s`` steps after warm-up out of ``S``;
    - step: ``gamma ** (t // step_size)``;
    - constant: ``1``.

    Its state is plain numbers, so it checkpoints with ``weights_only=True``.

    Example:
        >>> opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> sched = WarmupSchedule(opt, total_steps=10, warmup_steps=2)
        >>> [round(g["lr"], 3) for g in opt.param_groups]
        [0.5]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        total_steps: int,
        warmup_steps: int = 0,
        schedule: str = "cosine",
        min_lr_ratio: float = 0.0,
        step_size: int = 1,
        gamma: float = 0.1,
    ) -> None:
        if schedule not in ("cosine", "step", "constant"):
            raise ConfigError(f"WarmupSchedule: schedule must be cosine, step or constant, got {schedule!r}")
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 0)
        self.schedule = schedule
        self.min_lr_ratio = float(min_lr_ratio)
        self.step_size = max(int(step_size), 1)
        self.gamma = float(gamma)
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        """Multiplier of the base lr at step ``t`` (0-based)."""
        if t < self.warmup_steps:
            return (t + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step":
            return self.gamma ** (t // self.step_size)
        span = max(self.total_steps - self.warmup_steps, 1)
        s = min(t - self.warmup_steps, span)
        m = self.min_lr_ratio
        return m + (1.0 - m) * 0.5 * (1.0 + math.cos(math.pi * s / span))

    def get_lr(self) -> list[float]:
        f = self.factor(self.last_epoch)
        return [base * f for base in self.base_lrs]


def mixed_precision(mode: str, device: torch.device) -> tuple[Callable[[], Any] | None, torch.amp.GradScaler]:
    """The autocast context factory of ``TrainConfig.amp`` on ``device`` (``None`` when ``off``) and the
    gradient scaler of the step (enabled only for float16 on CUDA)."""
    if mode == "off":
        dtype = None
    elif device.type == "cpu":
        if mode == "fp16":
            raise ConfigError("amp 'fp16' needs CUDA; on CPU use amp 'bf16' (or 'auto')")
        dtype = torch.bfloat16
    elif mode == "auto":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler("cuda", enabled=dtype == torch.float16 and device.type == "cuda")
    if dtype is None:
        return None, scaler

    def factory():
        return torch.autocast(device_type=device.type, dtype=dtype)

    return factory, scaler
