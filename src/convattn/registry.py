"""The attention-layer registry: ``register_attn``, ``create_attn``, ``list_attn``, ``get_attn_info``.

Each layer class registers itself under one name with its *kind*:

- ``"gate"``: maps its input to the same shape (``(B, C, H, W)`` for ``ndim=4``,
  ``(B, C, L)`` for ``ndim=3``, ``(B, C, T, H, W)`` for ``ndim=5``);
- ``"conv"``: a convolution replacement that may change width and stride;
- ``"pool"``: a pooling head, ``(B, C, H, W) -> (B, D)``.

``insert_attn`` and the contract tests read the kind, ``ndim`` and ``min_size`` to
know where a layer fits and what input it takes.
"""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from .exceptions import ConfigError

__all__ = ["AttnInfo", "register_attn", "create_attn", "list_attn", "get_attn_info", "KINDS"]

KINDS = ("gate", "conv", "pool")


@dataclass(frozen=True)
class AttnInfo:
    """A registry entry.

    Attributes:
        name: registry name (``"cbam"``).
        cls: the ``nn.Module`` class.
        kind: ``"gate"``, ``"conv"`` or ``"pool"`` (see the module docstring).
        paper: citation of the paper the layer implements.
        ndim: number of input dimensions, batch included (4 for images).
        min_size: smallest spatial extent the layer accepts.
        default_kwargs: keyword-only constructor arguments and their defaults.
    """

    name: str
    cls: type
    kind: str
    paper: str
    ndim: int = 4
    min_size: int = 1
    default_kwargs: dict[str, Any] = field(default_factory=dict)


_REGISTRY: dict[str, AttnInfo] = {}


def _keyword_defaults(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls.__init__)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty
    }


def register_attn(
    name: str, *, kind: str = "gate", paper: str, ndim: int = 4, min_size: int = 1
) -> Callable[[type], type]:
    """Class decorator that adds an attention layer to the registry.

    Args:
        name: registry name; registering a name twice raises ``ValueError``.
        kind: ``"gate"``, ``"conv"`` or ``"pool"``.
        paper: the paper the layer implements (title, venue, link).
        ndim: input dimensions, batch included.
        min_size: smallest spatial extent the layer accepts.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> @register_attn("doc_identity", kind="gate", paper="none")
        ... class Identity(nn.Module):
        ...     def __init__(self, channels: int):
        ...         super().__init__()
        ...     def forward(self, x):
        ...         return x
        >>> create_attn("doc_identity", 8)(torch.ones(1, 8, 2, 2)).shape
        torch.Size([1, 8, 2, 2])
        >>> _ = _REGISTRY.pop("doc_identity")
    """
    if kind not in KINDS:
        raise ConfigError(f"register_attn({name!r}) expects kind in {KINDS}, got {kind!r}")
    if name in _REGISTRY:
        raise ValueError(
            f"register_attn: the name {name!r} is already registered to "
            f"{_REGISTRY[name].cls.__module__}.{_REGISTRY[name].cls.__qualname__}"
        )

    def decorator(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"register_attn({name!r}) expects an nn.Module subclass, got {cls!r}")
        _REGISTRY[name] = AttnInfo(
            name=name,
            cls=cls,
            kind=kind,
            paper=paper,
            ndim=ndim,
            min_size=min_size,
            default_kwargs=_keyword_defaults(cls),
        )
        cls.attn_name = name
        return cls

    return decorator


def _unknown(name: str) -> ValueError:
    close = difflib.get_close_matches(name.lower(), list(_REGISTRY), n=5, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"unknown attention layer {name!r}{hint} (convattn.list_attn() lists all {len(_REGISTRY)})"
    )


def get_attn_info(name: str | type) -> AttnInfo:
    """Return the registry entry of a layer, by name or by class.

    Raises:
        ValueError: unknown name; the message lists the close matches.
    """
    if isinstance(name, type):
        for info in _REGISTRY.values():
            if info.cls is name:
                return info
        raise ValueError(f"{name.__qualname__} is not a registered attention layer")
    if not isinstance(name, str):
        raise TypeError(f"get_attn_info expects a layer name or class, got {type(name).__name__}")
    try:
        return _REGISTRY[name]
    except KeyError:
        raise _unknown(name) from None


def create_attn(name_or_class: str | type, channels: int, **kwargs: Any) -> nn.Module:
    """Build an attention layer by registry name or class.

    Args:
        name_or_class: a registry name (``"se"``) or an ``nn.Module`` class whose
            constructor takes ``channels`` first.
        channels: number of input channels.
        **kwargs: keyword-only options of the layer; an unknown option raises
            ``TypeError`` naming the layer.

    Example:
        >>> import torch, convattn
        >>> layer = convattn.create_attn("se", 64, rd_ratio=1 / 8)
        >>> layer(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 64, 7, 9])
    """
    if isinstance(name_or_class, str):
        cls = get_attn_info(name_or_class).cls
    elif isinstance(name_or_class, type) and issubclass(name_or_class, nn.Module):
        cls = name_or_class
    else:
        raise TypeError(
            f"create_attn expects a layer name or nn.Module class, got {type(name_or_class).__name__}"
        )
    accepted = inspect.signature(cls.__init__).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    unknown = [k for k in kwargs if k not in accepted] if not has_var_kw else []
    if unknown:
        options = sorted(k for k, p in accepted.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
        raise TypeError(
            f"{cls.__name__} got unknown option(s) {unknown}; it accepts {options}"
        )
    return cls(channels, **kwargs)


def list_attn(pattern: str = "*", kind: str | None = None) -> list[str]:
    """Registered layer names matching a shell-style wildcard, sorted.

    Example:
        >>> import convattn
        >>> convattn.list_attn("cbam*")
        ['cbam', 'cbam_channel', 'cbam_spatial']
    """
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"list_attn expects kind in {KINDS} or None, got {kind!r}")
    return sorted(
        n for n, info in _REGISTRY.items()
        if fnmatch.fnmatchcase(n, pattern) and (kind is None or info.kind == kind)
    )
