"""``record_attention``: collect the attention maps of every convattn layer in a model.

Layers that compute an attention map subclass :class:`RecordsAttention` and call
``self.emit(name, tensor)`` when ``self.recording`` is true. Outside the context
manager ``recording`` is false, nothing is stored, and self-attention layers take
their fused, memory-lean path (no N×N matrix is built).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn

__all__ = ["RecordsAttention", "record_attention"]

# id(module) -> (sink dict, module path). Kept outside the modules so that they
# stay scriptable and picklable.
_SINKS: dict[int, tuple[dict[str, torch.Tensor], str]] = {}


class RecordsAttention(nn.Module):
    """Mixin for layers that can report their attention maps.

    ``recording`` is a plain bool attribute (``torch.export`` and ``torch.compile``
    see it as the constant ``False``). A layer with one map emits it under its own path;
    a layer with several emits ``name`` suffixes, stored as ``"path:name"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recording = False

    # torch._disable_dynamo imports torch._dynamo on first call, not at import time
    # (``torch.compiler.disable`` as a decorator costs seconds of `import convattn`).
    @torch._disable_dynamo
    def emit(self, name: str, attn: torch.Tensor) -> None:
        """Store ``attn`` (detached) for the active ``record_attention`` context."""
        entry = _SINKS.get(id(self))
        if entry is None:
            return
        sink, path = entry
        sink[f"{path}:{name}" if name else path] = attn.detach()


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the attention maps of every convattn layer inside ``model``.

    Yields a dict ``{module_path: tensor}`` filled during forward passes run inside
    the ``with`` block; a later forward overwrites the earlier map of the same layer.
    Layers with several maps (CBAM, DANet) store ``"path:channel"``-style keys.

    Example:
        >>> import torch, convattn
        >>> net = torch.nn.Sequential(convattn.create_attn("cbam", 16))
        >>> with convattn.record_attention(net) as maps:
        ...     _ = net(torch.randn(2, 16, 8, 8))
        >>> sorted(maps)
        ['0:channel', '0:spatial']
        >>> maps['0:spatial'].shape
        torch.Size([2, 1, 8, 8])
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"record_attention expects an nn.Module, got {type(model).__name__}")
    sink: dict[str, torch.Tensor] = {}
    layers = [(p, m) for p, m in model.named_modules() if isinstance(m, RecordsAttention)]
    previous = {id(m): (m.recording, _SINKS.get(id(m))) for _, m in layers}
    for path, module in layers:
        module.recording = True
        _SINKS[id(module)] = (sink, path or module.__class__.__name__)
    try:
        yield sink
    finally:
        for _, module in layers:
            was_recording, old = previous[id(module)]
            module.recording = was_recording
            if old is None:
                _SINKS.pop(id(module), None)
            else:
                _SINKS[id(module)] = old
