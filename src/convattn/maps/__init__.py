"""Attention maps of a whole model, recorded once, below both :mod:`convattn.eval` and :mod:`convattn.viz`.

:func:`record_maps` runs a model once and returns every convattn layer's maps, each layer's
input shape, and each spatial transformer's input, output and θ; :func:`interpret_maps`
reads the recorded tensors as spatial / channel / query / matrix / theta maps;
:func:`grad_cam` computes Grad-CAM (built in) or another CAM method (pytorch-grad-cam) at a target layer
found automatically.

Example:
    >>> import torch, convattn
    >>> from convattn.maps import interpret_maps, record_maps
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 16, 3, padding=1), convattn.create_attn("cbam", 16))
    >>> rec = record_maps(net, torch.randn(2, 1, 8, 8))
    >>> sorted(rec.maps), rec.shapes["1"]
    (['1:channel', '1:spatial'], (2, 16, 8, 8))
    >>> [(m.key, m.kind) for m in interpret_maps(rec.maps, rec.shapes, image_hw=(8, 8))]
    [('1:channel', 'channel'), ('1:spatial', 'spatial')]
"""

from .cam import CAM_METHODS, LogitsOnly, cam_title, find_cam_layer, grad_cam
from .kinds import AttentionMap, interpret_maps, query_map
from .record import Recording, TransformerPass, collect_attention, find_transformers, is_transformer, record_maps

__all__ = [
    "AttentionMap",
    "CAM_METHODS",
    "LogitsOnly",
    "Recording",
    "TransformerPass",
    "cam_title",
    "collect_attention",
    "find_cam_layer",
    "find_transformers",
    "grad_cam",
    "interpret_maps",
    "is_transformer",
    "query_map",
    "record_maps",
]
