"""convattn: attention for convolutional networks.

Plug-in attention layers behind one registry, a way to put them into any CNN, the
networks the papers describe, and the experiment loop around them.
"""

from __future__ import annotations

from . import layers  # registers every layer
from .exceptions import (
    CheckpointError,
    ConfigError,
    ConvattnError,
    DatasetNotFoundError,
    DTypeError,
    ShapeError,
)
from .layers import record_attention
from .registry import AttnInfo, create_attn, get_attn_info, list_attn, register_attn

__version__ = "0.1.0"

__all__ = [
    "AttnInfo",
    "CheckpointError",
    "ConfigError",
    "ConvattnError",
    "DTypeError",
    "DatasetNotFoundError",
    "ShapeError",
    "create_attn",
    "get_attn_info",
    "list_attn",
    "record_attention",
    "register_attn",
]
