"""Attention layers, one file per paper family. Importing this package registers every layer."""

from __future__ import annotations

import importlib
import pkgutil

from ._recording import RecordsAttention, record_attention

for _mod in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if not _mod.startswith("_") and _mod != "functional":
        importlib.import_module(f"{__name__}.{_mod}")

__all__ = ["RecordsAttention", "record_attention"]
