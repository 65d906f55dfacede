"""The model registry: ``register_model``, ``create_model``, ``list_models``."""

from __future__ import annotations

import difflib
import fnmatch
import inspect
from typing import Any, Callable

from torch import nn

from ..exceptions import ConfigError

__all__ = ["register_model", "create_model", "list_models", "get_model_entry"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory under ``name``; a name registered twice raises ``ValueError``.

    The factory is called as ``fn(*, num_classes, in_chans, attention, attn_kwargs, **options)``.

    Example:
        >>> from torch import nn
        >>> @register_model("doc_linear")
        ... def doc_linear(*, num_classes, in_chans=3, attention=None, attn_kwargs=None):
        ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        >>> "doc_linear" in list_models("doc_*")
        True
        >>> _ = _MODELS.pop("doc_linear")
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"register_model expects a non-empty name, got {name!r}")
    if name in _MODELS:
        raise ValueError(f"register_model: the name {name!r} is already registered to {_MODELS[name].__qualname__}")

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[name] = fn
        return fn

    return decorator


def get_model_entry(name: str) -> Callable[..., nn.Module]:
    """The factory registered under ``name``; unknown names raise ``ValueError`` with close matches."""
    if name not in _MODELS:
        close = difflib.get_close_matches(str(name).lower(), list(_MODELS), n=5, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ConfigError(f"unknown model {name!r}{hint} (convattn.models.list_models() lists all {len(_MODELS)})")
    return _MODELS[name]


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted.

    Example:
        >>> list_models("resnet*")
        ['resnet101', 'resnet18', 'resnet20', 'resnet32', 'resnet34', 'resnet50', 'resnet56']
    """
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: model name (``convattn.models.list_models()``).
        num_classes: number of output classes.
        in_chans: input image channels.
        attention: attention layer name to put into the network (each model documents
            where), or ``None`` / ``"none"`` for the plain network.
        attn_kwargs: options of the attention layer (``{"rd_ratio": 1/8}``).
        **kwargs: options of the model; unknown options raise ``ConfigError`` listing
            the accepted ones.

    Raises:
        ConfigError: unknown model (a ``ValueError``; the message lists close
            matches), unknown option or invalid value.

    Example:
        >>> import torch
        >>> net = create_model("simple_cnn", num_classes=10, in_chans=1, attention="se")
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    fn = get_model_entry(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ConfigError(f"create_model({name!r}) expects num_classes to be a positive int, got {num_classes!r}")
    if isinstance(in_chans, bool) or not isinstance(in_chans, int) or in_chans < 1:
        raise ConfigError(f"create_model({name!r}) expects in_chans to be a positive int, got {in_chans!r}")
    if isinstance(attention, str) and attention.lower() == "none":
        attention = None
    if attention is not None and not isinstance(attention, (str, type)):
        raise ConfigError(f"create_model({name!r}) expects attention to be a layer name or None, got {attention!r}")
    if attn_kwargs is not None and not isinstance(attn_kwargs, dict):
        raise ConfigError(f"create_model({name!r}) expects attn_kwargs to be a dict, got {attn_kwargs!r}")
    params = inspect.signature(fn).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(k for k in kwargs if k not in params)
        if unknown:
            accepted = sorted(k for k in params if k not in ("num_classes", "in_chans", "attention", "attn_kwargs"))
            raise ConfigError(f"model {name!r} got unknown option(s) {unknown}; it accepts {accepted}")
    return fn(num_classes=num_classes, in_chans=in_chans, attention=attention, attn_kwargs=dict(attn_kwargs or {}), **kwargs)
