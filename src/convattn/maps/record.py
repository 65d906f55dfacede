"""One recorded forward pass: every convattn layer's maps, the layers' input shapes, spatial transformers.

:func:`record_maps` runs a model once under :func:`convattn.record_attention` and, with
forward hooks, notes what the maps alone do not say: each recording layer's input shape
(to read a map's grid), the order in which layers ran, and each spatial transformer
(Jaderberg et al., "Spatial Transformer Networks", NeurIPS 2015) with its input, output
and θ, so that a map drawn after a transformer can be placed back in the image's frame.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import torch
from torch import nn

from ..layers import record_attention
from ..layers._recording import RecordsAttention

__all__ = ["Recording", "TransformerPass", "collect_attention", "find_transformers", "is_transformer", "record_maps"]


def is_transformer(module: nn.Module) -> bool:
    """A spatial transformer: a module with ``theta(x)`` and ``sampling_grid(x, theta)`` (convattn's ``stn``)."""
    return callable(getattr(module, "sampling_grid", None)) and callable(getattr(module, "theta", None))


def _bare(model: nn.Module) -> nn.Module:
    """The network inside ``DataParallel`` / ``DistributedDataParallel``: paths as ``record_attention`` names them."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def find_transformers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every spatial transformer inside ``model`` (``model.stn`` included)."""
    return [(path or type(m).__name__, m) for path, m in _bare(model).named_modules() if is_transformer(m)]


@dataclass
class TransformerPass:
    """One spatial transformer's first call in a recorded pass.

    Attributes:
        path: module path.
        module: the transformer.
        input, output: what it read and wrote.
        theta: its ``(B, 2, 3)`` matrix on ``input`` (as recorded, else ``module.theta(input)``).
        order: when it finished, on the pass's clock (see :attr:`Recording.started`).
        on_image: whether its input was the model's input images.
    """

    path: str
    module: nn.Module
    input: torch.Tensor
    output: torch.Tensor
    theta: torch.Tensor | None
    order: int
    on_image: bool


@dataclass
class Recording:
    """What :func:`record_maps` saw.

    Attributes:
        maps: the ``record_attention`` dict ``{"path[:name]": tensor}``.
        shapes: input shape of each recording (or watched) layer by module path (its last call).
        started: when each of those layers first started, on a clock shared with the transformers.
        transformers: each spatial transformer that ran, by module path.
        output: the model's output.
    """

    maps: dict[str, torch.Tensor]
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
    transformers: dict[str, TransformerPass] = field(default_factory=dict)
    output: Any = None

    def frame_of(self, layer: str) -> str | None:
        """The transformer reading the images whose output frame ``layer`` sees (``None``: the image's own)."""
        start = self.started.get(layer)
        if start is None:
            return None
        before = [(t.order, path) for path, t in self.transformers.items() if t.on_image and t.order < start]
        return max(before)[1] if before else None


def record_maps(model: nn.Module, images: torch.Tensor, *, watch: Iterable[str] = ()) -> Recording:
    """Run ``model(images)`` once (eval mode, no gradients) and record everything above.

    Args:
        model: any model (convattn layers inside record their maps).
        images: its input batch.
        watch: further module paths whose input shape and start to note (e.g. a Grad-CAM layer).

    Example:
        >>> import torch, convattn
        >>> net = torch.nn.Sequential(convattn.create_attn("stn", 1), torch.nn.Conv2d(1, 8, 3, padding=1),
        ...                           convattn.create_attn("cbam", 8))
        >>> rec = record_maps(net, torch.randn(2, 1, 12, 12))
        >>> rec.transformers["0"].theta.shape, rec.transformers["0"].on_image, rec.frame_of("2")
        (torch.Size([2, 2, 3]), True, '0')
    """
    bare = _bare(model)
    rec = Recording(maps={})
    clock = [0]
    watched = set(watch)
    hooks = []
    for path, module in bare.named_modules():
        name = path or type(module).__name__
        if isinstance(module, RecordsAttention) or path in watched:
            def pre(mod, args, _name=name):
                clock[0] += 1
                rec.started.setdefault(_name, clock[0])
                if args and isinstance(args[0], torch.Tensor):
                    rec.shapes[_name] = tuple(args[0].shape)

            hooks.append(module.register_forward_pre_hook(pre))
        if is_transformer(module):
            def post(mod, args, out, _name=name):
                clock[0] += 1
                if _name in rec.transformers or not (args and isinstance(args[0], torch.Tensor)):
                    return
                x = args[0]
                on_image = x.shape == images.shape and torch.equal(x, images)
                rec.transformers[_name] = TransformerPass(_name, mod, x, out, None, clock[0], on_image)

            hooks.append(module.register_forward_hook(post))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            with record_attention(model) as maps:
                rec.output = model(images)
            for path, t in rec.transformers.items():
                emitted = maps.get(f"{path}:theta")
                t.theta = emitted if emitted is not None and emitted.dim() == 3 else t.module.theta(t.input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    rec.maps = dict(maps)
    return rec


def collect_attention(
    model: nn.Module, images: torch.Tensor
) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, ...]], Any]:
    """``(maps, input_shapes, output)`` of :func:`record_maps`: the maps, each recording layer's input
    shape by module path, and the model output."""
    rec = record_maps(model, images)
    return rec.maps, rec.shapes, rec.output
