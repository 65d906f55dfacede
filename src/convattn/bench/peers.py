"""timm's implementations of the layers and models convattn also has, built with the same settings.

``timm`` is optional (``pip install convattn[peers]``); :func:`require_timm` raises a
:class:`~convattn.exceptions.ConfigError` that says how to install it.

For a layer the two implementations share, the timm module is built with the
reduction knobs (``rd_ratio``, ``rd_channels``, ``rd_divisor``) and kernel size that
the convattn layer uses, where timm's constructor has an argument of that name;
every other option keeps timm's default. The parameter counts of both rows show
whether the two configurations match.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any, Callable

from torch import nn

from ..exceptions import ConfigError

__all__ = ["TIMM_LAYERS", "TIMM_MODELS", "require_timm", "timm_layer_class", "create_timm_layer", "create_timm_model"]

# convattn layer name -> timm class, as "module:Class" under timm.layers.
TIMM_LAYERS: dict[str, str] = {
    "se": "squeeze_excite:SEModule",
    "ese": "squeeze_excite:EffectiveSEModule",
    "cbam": "cbam:CbamModule",
    "cbam_channel": "cbam:ChannelAttn",
    "cbam_spatial": "cbam:SpatialAttn",
    "light_cbam": "cbam:LightCbamModule",
    "eca": "eca:EcaModule",
    "ceca": "eca:CecaModule",
    "gc": "global_context:GlobalContext",
    "ge": "gather_excite:GatherExcite",
    "sk": "selective_kernel:SelectiveKernel",
    "splat": "split_attn:SplitAttn",
    "coord": "coord_attn:CoordAttn",
    "scoord": "coord_attn:SimpleCoordAttn",
    "ela": "coord_attn:EfficientLocalAttn",
    "strip": "coord_attn:StripAttn",
    "non_local": "non_local_attn:NonLocalAttn",
    "bat": "non_local_attn:BatNonLocalAttn",
    "bottleneck_attn": "bottleneck_attn:BottleneckAttn",
    "halo": "halo_attn:HaloAttn",
    "lambda": "lambda_layer:LambdaLayer",
}

# models timm builds with an attention layer in every residual block.
TIMM_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101")

# options copied from the convattn layer to the timm one when both accept the name.
_SHARED_OPTIONS = ("rd_ratio", "rd_channels", "rd_divisor", "kernel_size", "spatial_kernel_size", "num_heads", "dim_head")


def require_timm():
    """Import timm or raise ``ConfigError`` with the install command."""
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConfigError(
            "--compare timm needs timm, which is not installed: pip install 'convattn[peers]' (or pip install timm)"
        ) from None


def timm_layer_class(name: str) -> type[nn.Module] | None:
    """timm's class for the convattn layer ``name``, or ``None`` if timm has none (or lacks it in this version)."""
    spec = TIMM_LAYERS.get(name)
    if spec is None:
        return None
    require_timm()
    module_name, cls_name = spec.split(":")
    try:
        module = importlib.import_module(f"timm.layers.{module_name}")
    except ImportError:
        return None
    return getattr(module, cls_name, None)


def _matched_options(cls: type, options: dict[str, Any]) -> dict[str, Any]:
    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in options.items() if k in _SHARED_OPTIONS and k in params}


def _convattn_options(name: str, overrides: dict[str, Any] | None) -> dict[str, Any]:
    from ..registry import get_attn_info

    opts = dict(get_attn_info(name).default_kwargs)
    opts.update(overrides or {})
    return opts


def _timm_factory(name: str, overrides: dict[str, Any] | None = None) -> Callable[..., nn.Module] | None:
    cls = timm_layer_class(name)
    if cls is None:
        return None
    opts = _matched_options(cls, _convattn_options(name, overrides))
    return functools.partial(cls, **opts) if opts else cls


def create_timm_layer(
    name: str, channels: int, size: tuple[int, int], overrides: dict[str, Any] | None = None
) -> nn.Module | None:
    """timm's module for layer ``name`` at ``channels`` (``size`` is given to layers that need ``feat_size``)."""
    factory = _timm_factory(name, overrides)
    if factory is None:
        return None
    base = factory.func if isinstance(factory, functools.partial) else factory
    params = inspect.signature(base.__init__).parameters
    kwargs: dict[str, Any] = {}
    if "feat_size" in params:
        kwargs["feat_size"] = tuple(size)
    return factory(channels, **kwargs)


def create_timm_model(
    model: str,
    attention: str | None,
    *,
    num_classes: int,
    in_chans: int = 3,
    attn_kwargs: dict[str, Any] | None = None,
) -> nn.Module | None:
    """timm's ``model`` with ``attention`` in every block (``block_args=dict(attn_layer=...)``), or ``None``.

    Returns ``None`` when timm has no such model or no such layer.
    """
    timm = require_timm()
    if model not in TIMM_MODELS:
        return None
    kwargs: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, "pretrained": False}
    if attention not in (None, "none"):
        factory = _timm_factory(attention, attn_kwargs)
        if factory is None:
            return None
        kwargs["block_args"] = {"attn_layer": factory}
    return timm.create_model(model, **kwargs)
