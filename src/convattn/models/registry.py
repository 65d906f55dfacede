"""The model registry: ``register_model``, ``create_model``, ``list_models``, ``get_model_info``.

A :class:`~convattn.registry.Registry` of :class:`ModelInfo` entries. Each entry says
what a caller (the training engine) needs to know about the network without reading
its factory: whether ``insert_attn`` places its attention (so it takes ``attn_where``,
``attn_stages``, ``identity_init``) and whether it takes the dataset's ``image_size``.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

from ..exceptions import ConfigError
from ..registry import Registry

__all__ = ["MODELS", "ModelInfo", "create_model", "get_model_info", "list_models", "register_model"]

# what every factory takes, passed by create_model itself
_COMMON = ("num_classes", "in_chans", "attention", "attn_kwargs")


@dataclass(frozen=True)
class ModelInfo:
    """A model registry entry.

    Attributes:
        name: registry name (``"resnet50"``).
        factory: ``fn(*, num_classes, in_chans, attention, attn_kwargs, **options) -> nn.Module``.
        places_attention: ``attention`` goes in with ``insert_attn``, so the model takes
            ``attn_where`` / ``attn_stages`` / ``identity_init`` (a run's ``placement``);
            otherwise the network puts its attention where its design says.
        takes_image_size: the model takes ``image_size`` (its width depends on the input size).
        options: the model's own keyword options and their defaults.
        pretrained: ``("torchvision", arch)`` or ``("timm", arch)``: whose named weights
            (``create_model(..., weights="DEFAULT")``) the network takes; ``None``: files only.
    """

    name: str
    factory: Callable[..., nn.Module]
    places_attention: bool
    takes_image_size: bool
    options: dict[str, Any] = field(default_factory=dict)
    pretrained: tuple[str, str] | None = None


MODELS: Registry[ModelInfo] = Registry(
    "model", listing="convattn.list_models()", cli="convattn list models", fixed=_COMMON
)
"""The model registry."""


def register_model(
    name: str,
    *,
    places_attention: bool | None = None,
    takes_image_size: bool | None = None,
    pretrained: tuple[str, str] | None = None,
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator adding a model factory under ``name``; a name registered twice raises ``ValueError``.

    The factory is called as ``fn(*, num_classes, in_chans, attention, attn_kwargs, **options)``.
    ``places_attention`` and ``takes_image_size`` (see :class:`ModelInfo`) default to whether
    the factory's signature has ``attn_where`` / ``image_size``; ``pretrained`` names the torchvision /
    timm architecture whose named weights the network loads.

    Example:
        >>> from torch import nn
        >>> @register_model("doc_linear")
        ... def doc_linear(*, num_classes, in_chans=3, attention=None, attn_kwargs=None):
        ...     return nn.Sequential(nn.Flatten(), nn.LazyLinear(num_classes))
        >>> list_models("doc_*"), get_model_info("doc_linear").places_attention
        (['doc_linear'], False)
        >>> _ = MODELS.remove("doc_linear")
    """
    MODELS.check_new(name)

    def decorator(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(fn).parameters
        info = ModelInfo(
            name,
            fn,
            places_attention="attn_where" in params if places_attention is None else places_attention,
            takes_image_size="image_size" in params if takes_image_size is None else takes_image_size,
            options={
                k: p.default for k, p in params.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and k not in _COMMON
            },
            pretrained=pretrained,
        )
        MODELS.register(name, info)
        return fn

    return decorator


def get_model_info(name: str) -> ModelInfo:
    """The registry entry of ``name``.

    Raises:
        ConfigError: unknown name (a ``ValueError``); the message lists the close matches.

    Example:
        >>> info = get_model_info("resnet20")
        >>> info.places_attention, info.takes_image_size, info.options["shortcut"]
        (True, False, 'A')
    """
    return MODELS.get(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style wildcard, sorted.

    Example:
        >>> list_models("resnet*")
        ['resnet101', 'resnet18', 'resnet20', 'resnet32', 'resnet34', 'resnet50', 'resnet56']
    """
    return MODELS.list(pattern)


def create_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    weights: Any = None,
    download: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model, optionally from pretrained weights.

    Args:
        name: model name (``convattn.list_models()``, ``convattn list models``).
        num_classes: number of output classes.
        in_chans: input image channels.
        attention: attention layer name to put into the network (each model documents
            where), or ``None`` / ``"none"`` for the plain network.
        attn_kwargs: options of the attention layer (``{"rd_ratio": 1/8}``).
        weights: pretrained weights (``convattn.models.weights.load_weights``): a torchvision weight
            name (``"DEFAULT"``, ``"IMAGENET1K_V1"``) or timm tag of the network, a checkpoint file or a
            state dict. The classifier is new when ``num_classes`` differs; attention placed by
            ``insert_attn`` starts as the identity (``identity_init=True`` unless given), so the network
            computes what the pretrained one did. What was loaded is logged.
        download: fetch named weights missing from the torch hub / Hugging Face cache.
        **kwargs: options of the model (``get_model_info(name).options``).

    Raises:
        ConfigError: unknown model (a ``ValueError``; the message lists close
            matches) or invalid value; unknown, missing or unfitting weights.
        UnknownOptionError: an option the model or its layer does not take (a ``TypeError``).

    Example:
        >>> import torch
        >>> net = create_model("simple_cnn", num_classes=10, in_chans=1, attention="se")
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """
    info = MODELS.get(name)  # an unknown name is the first thing to report
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
    if weights is not None and info.places_attention:
        kwargs.setdefault("identity_init", True)
    model = MODELS.create(
        name, num_classes=num_classes, in_chans=in_chans, attention=attention,
        attn_kwargs=dict(attn_kwargs or {}), **kwargs,
    )
    if weights is not None:
        from .weights import load_weights

        load_weights(model, name, weights, download=download, pretrained=info.pretrained)
    return model
