"""The modules ``insert_attn`` adds: a chain of layers, a wrapper that runs a module then its chain,
and the identity blend."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..layers._recording import RecordsAttention
from ..registry import LAYERS

__all__ = ["AttentionChain", "IdentityBlend", "WithAttention", "is_inserted", "unwrap"]


class AttentionChain(nn.Sequential):
    """The attention layers attached after one module, applied in insertion order."""


class IdentityBlend(nn.Module):
    """``x + γ · (layer(x) − x)`` with a learnable scalar ``γ`` that starts at 0.

    At initialisation the output equals the input exactly, so a pretrained network
    keeps its outputs when the layer is inserted; training moves ``γ`` away from 0.

    A layer that can compute the blend in its own kernels has ``forward_blended(x, gamma)``:
    it returns the blended output (and records its maps as ``forward`` does), or ``None``
    where its kernels cannot run; then the blend runs in PyTorch ops around ``layer(x)``.

    Args:
        layer: the shape-preserving layer to blend in.
        gamma: initial value of ``γ``.

    Shape:
        same as ``layer``: ``(B, C, *) -> (B, C, *)``.

    Example:
        >>> import torch, convattn
        >>> blend = IdentityBlend(convattn.create_attn("se", 16))
        >>> x = torch.randn(2, 16, 5, 4)
        >>> torch.equal(blend(x), x)
        True
    """

    def __init__(self, layer: nn.Module, *, gamma: float = 0.0) -> None:
        super().__init__()
        self.layer = layer
        self.gamma = nn.Parameter(torch.full((), float(gamma)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = getattr(self.layer, "forward_blended", None)
        out = fused(x, self.gamma) if fused is not None else None
        return out if out is not None else x + self.gamma * (self.layer(x) - x)


class WithAttention(nn.Module):
    """``module`` followed by the attention layers in ``attn`` (an :class:`AttentionChain`).

    ``insert_attn`` puts this in the place of a module it inserts after. Attributes
    the wrapper does not have are read from the wrapped module
    (``block.bn2.num_features``). When a state dict is loaded, keys written for the
    bare module (``bn2.weight``) are mapped to ``bn2.module.weight``, so weights saved
    before insertion load with only the new layers' keys missing.

    Args:
        module: the module whose output the layers refine.
        *layers: shape-preserving attention layers, applied in order.

    Shape:
        that of ``module``: the layers keep its ``(B, C, *)`` output shape.

    Example:
        >>> import torch, convattn
        >>> bn = torch.nn.BatchNorm2d(8)
        >>> wrapped = WithAttention(bn, convattn.create_attn("se", 8))
        >>> sorted(wrapped.load_state_dict(bn.state_dict(), strict=False).missing_keys)[:1]
        ['attn.0.fc1.bias']
        >>> wrapped(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, module: nn.Module, *layers: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.attn = AttentionChain(*layers)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.attn(self.module(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            modules = self.__dict__.get("_modules")
            if not modules or "module" not in modules or name.startswith("__"):
                raise
            return getattr(modules["module"], name)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # a state dict saved before insertion holds the bare module's keys ("bn2.weight"): they belong
        # to the wrapped one ("bn2.module.weight"), even where the module has a child named "attn"
        keys = [k for k in state_dict if k.startswith(prefix)]
        if not any(k.startswith(f"{prefix}module.") for k in keys):
            inner = set(self.module.state_dict(keep_vars=True))
            for key in keys:
                if key[len(prefix):] in inner:
                    state_dict[f"{prefix}module.{key[len(prefix):]}"] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


def is_inserted(m: nn.Module) -> bool:
    """Whether ``m`` is an attention layer added by ``insert_attn`` (or any convattn layer)."""
    return isinstance(m, (AttentionChain, IdentityBlend, RecordsAttention)) or LAYERS.find(type(m)) is not None


def unwrap(m: nn.Module) -> nn.Module:
    """The module a :class:`WithAttention` wraps; any other module itself."""
    return m.module if isinstance(m, WithAttention) else m
