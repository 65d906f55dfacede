"""Networks built from torchvision / timm parts plus convattn layers, and ``insert_attn``.

``create_model(name, num_classes=..., attention=...)`` builds a registered network;
``insert_attn(model, name, where=...)`` puts a layer into any existing CNN.
Importing this package registers every model module (each non-underscore module).
"""

from __future__ import annotations

import importlib
import pkgutil

from ._registry import create_model, get_model_entry, list_models, register_model
from .insert import AttentionChain, AttnPosition, IdentityBlend, WithAttention, attn_positions, insert_attn

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod != "insert":
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = [
    "AttentionChain",
    "AttnPosition",
    "IdentityBlend",
    "WithAttention",
    "attn_positions",
    "create_model",
    "get_model_entry",
    "insert_attn",
    "list_models",
    "register_model",
]
