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
from typing import Any

from . import layers  # registers every layer
from .engine import TrainConfig, evaluate, load_checkpoint, load_run, train
from .exceptions import (
    CheckpointError,
    ConfigError,
    ConvattnError,
    DatasetNotFoundError,
    DTypeError,
    ShapeError,
)
from .layers import RecordsAttention, record_attention
from .models import attn_positions, create_model, insert_attn, list_models, register_model
from .registry import AttnInfo, create_attn, get_attn_info, list_attn, register_attn

__version__ = "0.1.0"

# Sub-packages that pull in heavier dependencies (matplotlib, Grad-CAM) load on first use.
_LAZY = ("bench", "data", "eval", "viz")


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'convattn' has no attribute {name!r}")


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
    "attn_positions",
    "create_attn",
    "create_model",
    "evaluate",
    "get_attn_info",
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
