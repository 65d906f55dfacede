"""Shared helpers for layers: widths, layer lookup, argument and input checks."""

from __future__ import annotations

import difflib
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError, DTypeError, ShapeError
from .modes import is_symbolic

__all__ = [
    "make_divisible",
    "reduced_channels",
    "get_layer",
    "check_channels",
    "check_positive",
    "check_ratio",
    "check_odd",
    "check_choice",
    "check_input",
    "HardSigmoid",
]


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``v`` to a multiple of ``divisor``, never going below ``round_limit * v`` (as timm and MobileNet do)."""
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < round_limit * v:
        new_v += divisor
    return new_v


def reduced_channels(
    layer: str, channels: int, rd_ratio: float, rd_channels: int | None, rd_divisor: int
) -> int:
    """Width of a reduction bottleneck: ``rd_channels`` if given, else ``make_divisible(channels * rd_ratio, rd_divisor)``."""
    if rd_channels is not None:
        check_positive(layer, "rd_channels", rd_channels)
        return int(rd_channels)
    check_ratio(layer, "rd_ratio", rd_ratio)
    check_positive(layer, "rd_divisor", rd_divisor)
    return make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.0)


class HardSigmoid(nn.Module):
    """``relu6(x + 3) / 6``: the values and gradients of ``nn.Hardsigmoid``, twice differentiable.

    PyTorch's fused ``hardsigmoid_backward`` has no derivative, so a gradient penalty
    (``create_graph=True``) through ``nn.Hardsigmoid`` fails; ``"hard_sigmoid"``
    resolves to this module instead.

    Example:
        >>> x = torch.linspace(-4, 4, 9)
        >>> torch.equal(HardSigmoid()(x), nn.Hardsigmoid()(x))
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "mish": nn.Mish,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": HardSigmoid,
    "hardsigmoid": HardSigmoid,
    "hard_swish": nn.Hardswish,
    "hardswish": nn.Hardswish,
    "tanh": nn.Tanh,
    "identity": nn.Identity,
}
_NORMS: dict[str, type[nn.Module]] = {
    "batchnorm": nn.BatchNorm2d,
    "batchnorm2d": nn.BatchNorm2d,
    "bn": nn.BatchNorm2d,
    "batchnorm1d": nn.BatchNorm1d,
    "batchnorm3d": nn.BatchNorm3d,
    "groupnorm": nn.GroupNorm,
    "layernorm": nn.LayerNorm,
    "instancenorm": nn.InstanceNorm2d,
    "identity": nn.Identity,
}
_LAYERS = {**_ACTIVATIONS, **_NORMS}


def get_layer(spec: str | type[nn.Module] | None, *, owner: str = "layer", arg: str = "layer") -> type[nn.Module]:
    """Resolve a layer given as a name (``"relu"``, ``"bn"``) or an ``nn.Module`` class.

    ``None`` resolves to ``nn.Identity``. Unknown names raise ``ConfigError``
    naming the owner, the argument and the close matches.
    """
    if spec is None:
        return nn.Identity
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key in _LAYERS:
            return _LAYERS[key]
        close = difflib.get_close_matches(key, list(_LAYERS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise ConfigError(f"{owner}: unknown {arg} {spec!r}{hint}; known: {sorted(_LAYERS)}")
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec
    raise ConfigError(f"{owner}: {arg} expects a name or an nn.Module class, got {spec!r}")


def check_channels(layer: str, channels: int) -> int:
    """``channels`` must be a positive int."""
    if isinstance(channels, bool) or not isinstance(channels, int) or channels <= 0:
        raise ConfigError(f"{layer} expects channels to be a positive int, got {channels!r}")
    return channels


def check_positive(layer: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{layer} expects {name} > 0, got {value!r}")


def check_ratio(layer: str, name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ConfigError(f"{layer} expects {name} in (0, 1], got {value!r}")


def check_odd(layer: str, name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % 2 == 0:
        raise ConfigError(f"{layer} expects {name} to be an odd positive int, got {value!r}")


def check_choice(layer: str, name: str, value: object, choices: Sequence[object]) -> None:
    if value not in choices:
        raise ConfigError(f"{layer} expects {name} in {list(choices)}, got {value!r}")


_DIM_NAMES = {3: "(B, {c}, L)", 4: "(B, {c}, H, W)", 5: "(B, {c}, T, H, W)"}


def check_input(
    layer: str, x: torch.Tensor, channels: int | None, ndim: int = 4, min_size: int = 1
) -> None:
    """Validate a layer's input tensor; raise ``ShapeError`` / ``DTypeError`` naming the layer.

    Skipped under tracers (see :func:`convattn.layers.modes.is_symbolic`); in eager mode it always runs.
    """
    if is_symbolic(x):
        return
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{layer} expects a torch.Tensor, got {type(x).__name__}")
    if x.dim() != ndim or (channels is not None and x.shape[1] != channels):
        want = _DIM_NAMES.get(ndim, f"{ndim}-D").format(c=channels if channels is not None else "C")
        raise ShapeError(f"{layer} expects input of shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DTypeError(f"{layer} expects a floating-point input, got {x.dtype}")
    if min_size > 1 and min(x.shape[2:]) < min_size:
        raise ShapeError(
            f"{layer} expects every spatial size >= {min_size}, got input of shape {tuple(x.shape)}"
        )
