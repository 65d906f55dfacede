"""Networks built from torchvision / timm parts plus convattn layers, and ``insert_attn``.

``create_model(name, num_classes=..., attention=...)`` builds a registered network;
``insert_attn(model, name, where=...)`` puts a layer into any existing CNN.
Importing this package registers every model: each module but the machinery below
(``registry``, ``probe``, ``positions``, ``insert``, ``weights``, and the underscore modules) is
one network family whose ``@register_model`` runs on import.
"""

from __future__ import annotations

import importlib
import pkgutil

from ._wrappers import AttentionChain, IdentityBlend, WithAttention
from .insert import insert_attn
from .positions import AttnPosition, AttnPositions, attn_positions
from .registry import ModelInfo, create_model, get_model_info, list_models, register_model
from .weights import finetune_groups, load_weights

_MACHINERY = ("registry", "probe", "positions", "insert", "weights")

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod not in _MACHINERY:
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = [
    "AttentionChain",
    "AttnPosition",
    "AttnPositions",
    "IdentityBlend",
    "ModelInfo",
    "WithAttention",
    "attn_positions",
    "create_model",
    "finetune_groups",
    "get_model_info",
    "insert_attn",
    "list_models",
    "load_weights",
    "register_model",
]
