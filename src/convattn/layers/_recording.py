"""``record_attention``: collect the attention maps of every convattn layer in a model.

Layers that compute an attention map subclass :class:`RecordsAttention` and call
``self.emit(name, tensor)`` when ``self.recording`` is true. Outside the context
manager ``recording`` is false, nothing is stored, and self-attention layers take
their fused, memory-lean path (no N×N matrix is built).

The sink a layer writes to is an attribute of the layer, so the replicas
``nn.DataParallel`` makes for each device (shallow copies) write to it too; copies
made with ``copy.deepcopy`` or pickling never inherit the recording state.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["RecordsAttention", "record_attention"]

_SINK_ATTR = "_attn_sink"


class _Sink:
    """Where one ``record_attention`` context stores maps.

    Under ``nn.DataParallel`` each device's replica emits the maps of its slice of the
    batch; they are joined along the batch dimension in device order. Every forward
    of the recorded model starts a new pass, so a later forward overwrites.
    """

    def __init__(self) -> None:
        self.maps: dict[str, torch.Tensor] = {}
        self.parts: dict[str, dict[int, torch.Tensor]] = {}
        self.lock = threading.Lock()
        self.multi_device = False

    def new_pass(self, *_: Any) -> None:
        self.parts.clear()

    def store(self, key: str, attn: torch.Tensor) -> None:
        attn = attn.detach()
        if not self.multi_device:
            self.maps[key] = attn
            return
        device = attn.device.index if attn.device.index is not None else -1
        with self.lock:
            parts = self.parts.setdefault(key, {})
            parts[device] = attn
            ordered = [parts[d] for d in sorted(parts)]
            first = ordered[0].device
            self.maps[key] = torch.cat([p.to(first) for p in ordered]) if len(ordered) > 1 else ordered[0]


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
        entry = self.__dict__.get(_SINK_ATTR)
        if entry is None:
            return
        sink, path = entry
        sink.store(f"{path}:{name}" if name else path, attn)

    def __getstate__(self) -> dict[str, Any]:
        # deepcopy and pickle: a copy is a fresh layer, not part of anyone's recording
        state = super().__getstate__().copy()
        state.pop(_SINK_ATTR, None)
        state["recording"] = False
        return state


def _unwrap(model: nn.Module) -> nn.Module:
    """The network inside ``DataParallel`` / ``DistributedDataParallel``, so paths match the bare model."""
    wrappers = (nn.DataParallel, nn.parallel.DistributedDataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


@contextmanager
def record_attention(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the attention maps of every convattn layer inside ``model``.

    Yields a dict ``{module_path: tensor}`` filled during forward passes run inside
    the ``with`` block; a later forward overwrites the earlier map of the same layer.
    Layers with several maps (CBAM, DANet) store ``"path:channel"``-style keys.
    ``model`` may be wrapped in ``nn.DataParallel`` or ``DistributedDataParallel``:
    paths are those of the wrapped network, and under ``DataParallel`` the maps of all
    devices are joined along the batch dimension. Copies of the model made inside
    the block (``copy.deepcopy``, pickling) do not record.

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
    sink = _Sink()
    hook = None
    if isinstance(model, nn.DataParallel) and len(model.device_ids) > 1:
        sink.multi_device = True
        hook = model.register_forward_pre_hook(sink.new_pass)
    layers = [(p, m) for p, m in _unwrap(model).named_modules() if isinstance(m, RecordsAttention)]
    previous = [(m, m.recording, m.__dict__.get(_SINK_ATTR)) for _, m in layers]
    for path, module in layers:
        module.recording = True
        module.__dict__[_SINK_ATTR] = (sink, path or module.__class__.__name__)
    try:
        yield sink.maps
    finally:
        if hook is not None:
            hook.remove()
        for module, was_recording, old in previous:
            module.recording = was_recording
            if old is None:
                module.__dict__.pop(_SINK_ATTR, None)
            else:
                module.__dict__[_SINK_ATTR] = old
