"""convattn: attention for convolutional networks.

Plug-in attention layers behind one registry, a way to put them into any CNN, the
networks the papers describe, and the experiment loop around them: train, evaluate,
measure cost, and look at what the attention attends to.

Example:
    >>> import torch, convattn
    >>> layer = convattn.create_attn("cbam", 64)
    >>> layer(torch.randn(2, 64, 14, 15)).shape
    torch.Size([2, 64, 14, 15])
    >>> net = convattn.create_model("resnet20", num_classes=10, attention="se")
    >>> net(torch.randn(2, 3, 32, 32)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import layers  # registers every layer
from .exceptions import (
    CheckpointError,
    ConfigError,
    ConvattnError,
    DatasetNotFoundError,
    DTypeError,
    ShapeError,
    UnknownOptionError,
)
from .layers import RecordsAttention, record_attention
from .registry import AttnInfo, create_attn, get_attn_info, list_attn, register_attn

if TYPE_CHECKING:
    from .engine import TrainConfig, evaluate, load_checkpoint, load_run, train
    from .engine.export import export
    from .models import attn_positions, create_model, get_model_info, insert_attn, list_models, register_model

from ._version import __version__

# `import convattn` and building layers stay light: the networks (torchvision), the
# training engine (yaml, tqdm, PIL, torchvision datasets) and the sub-packages that
# pull in matplotlib or Grad-CAM load on first use.
_LAZY_MODULES = ("bench", "data", "engine", "eval", "experiments", "maps", "models", "viz")
_LAZY_NAMES = {
    "TrainConfig": "engine",
    "compare": "experiments",
    "evaluate": "engine",
    "export": "engine.export",
    "load_checkpoint": "engine",
    "load_run": "engine",
    "train": "engine",
    "attn_positions": "models",
    "create_model": "models",
    "get_model_info": "models",
    "insert_attn": "models",
    "list_models": "models",
    "register_model": "models",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY_MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
        globals()[name] = value  # later look-ups skip __getattr__
        return value
    raise AttributeError(f"module 'convattn' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | set(_LAZY_MODULES))


__all__ = [
    "AttnInfo",
    "CheckpointError",
    "ConfigError",
    "ConvattnError",
    "DTypeError",
    "DatasetNotFoundError",
    "RecordsAttention",
    "ShapeError",
    "TrainConfig",
    "UnknownOptionError",
    "attn_positions",
    "compare",
    "create_attn",
    "create_model",
    "evaluate",
    "export",
    "get_attn_info",
    "get_model_info",
    "insert_attn",
    "list_attn",
    "list_models",
    "load_checkpoint",
    "load_run",
    "record_attention",
    "register_attn",
    "register_model",
    "train",
]
