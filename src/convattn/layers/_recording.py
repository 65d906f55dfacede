"""``record_attention``: collect the attention maps of every convattn layer in a model.

Layers that compute an attention map subclass :class:`RecordsAttention` and call
``self.emit(name, tensor)`` when ``self.recording`` is true. Outside the context
manager ``recording`` is false, nothing is stored, and self-attention layers take
their fused, memory-lean path (no N×N matrix is built).

Each context has its own sink, and a layer holds the sinks of every context open on it
(an attribute of the layer, so the replicas ``nn.DataParallel`` makes for each device,
shallow copies, see them too); contexts may exit in any order. A sink takes the maps
of forward passes run by the thread that opened its context (and, under multi-device
``DataParallel``, by its worker threads). Copies made with ``copy.deepcopy`` or
pickling never inherit the recording state.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

__all__ = ["RecordsAttention", "record_attention"]

_SINK_ATTR = "_attn_sink"


_STATE_LOCK = threading.Lock()  # entering and leaving contexts (any thread)


class _Sink:
    """Where one ``record_attention`` context stores maps.

    It takes the maps of its own thread's forward passes. Under multi-device
    ``nn.DataParallel`` each device's replica runs in a worker thread and emits the maps
    of its slice of the batch; they are joined along the batch dimension in device order.
    Every forward of the recorded model starts a new pass, so a later forward overwrites.
    """

    def __init__(self, multi_device: bool = False) -> None:
        self.maps: dict[str, torch.Tensor] = {}
        self.parts: dict[str, dict[int, torch.Tensor]] = {}
        self.lock = threading.Lock()
        self.multi_device = multi_device
        self.thread = threading.get_ident()

    def accepts(self) -> bool:
        """Whether a map emitted by the calling thread belongs to this context."""
        return self.multi_device or threading.get_ident() == self.thread

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


class _Active:
    """The contexts recording one layer: ``(sink, path)`` pairs in a tuple that is replaced, never
    changed in place (``emit`` reads it without a lock), and the layer's ``recording`` before the first."""

    __slots__ = ("entries", "before")

    def __init__(self, before: bool) -> None:
        self.entries: tuple[tuple[_Sink, str], ...] = ()
        self.before = before


class RecordsAttention(nn.Module):
    """Mixin for layers that can report their attention maps.

    ``recording`` is a plain bool attribute (``torch.export`` and ``torch.compile``
    see it as the constant ``False``), true while any context records the layer: forward
    passes of other threads then also take the explicit path, and store nothing. A layer
    with one map emits it under its own path; a layer with several emits ``name``
    suffixes, stored as ``"path:name"``.
    """

    def __init__(self) -> None:
        super().__init__()
        self.recording = False

    # torch._disable_dynamo imports torch._dynamo on first call, not at import time
    # (``torch.compiler.disable`` as a decorator costs seconds of `import convattn`).
    @torch._disable_dynamo
    def emit(self, name: str, attn: torch.Tensor) -> None:
        """Store ``attn`` (detached) in the sink of each ``record_attention`` context of this thread."""
        active = self.__dict__.get(_SINK_ATTR)
        if active is None:
            return
        for sink, path in active.entries:
            if sink.accepts():
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

    Contexts on one model may overlap and exit in any order; each gets the maps of the
    forward passes run while it is open, by the thread that opened it (so two threads
    recording one model each get their own passes). When the last context on a layer
    exits, the layer stops recording and self-attention is memory-lean again.

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
    sink = _Sink(multi_device=isinstance(model, nn.DataParallel) and len(model.device_ids) > 1)
    hook = model.register_forward_pre_hook(sink.new_pass) if sink.multi_device else None
    layers = [(p, m) for p, m in _unwrap(model).named_modules() if isinstance(m, RecordsAttention)]
    with _STATE_LOCK:
        for path, module in layers:
            active = module.__dict__.get(_SINK_ATTR)
            if active is None:
                active = module.__dict__[_SINK_ATTR] = _Active(module.recording)
            active.entries += ((sink, path or module.__class__.__name__),)
            module.recording = True
    try:
        yield sink.maps
    finally:
        if hook is not None:
            hook.remove()
        with _STATE_LOCK:
            for _, module in layers:
                active = module.__dict__[_SINK_ATTR]
                active.entries = tuple(e for e in active.entries if e[0] is not sink)
                if not active.entries:  # the last context on this layer: back to the memory-lean path
                    module.recording = active.before
                    del module.__dict__[_SINK_ATTR]
