"""SE's kernel formulas: the ``convattn_se`` ops' formula in PyTorch ops, their shape (fake) formulas
and registration; the modules are in :mod:`convattn.layers.se`.

Hu, Shen, Sun, "Squeeze-and-Excitation Networks", CVPR 2018, https://arxiv.org/abs/1709.01507
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from . import kernels
from ._ops import layer_op_registrar

__all__ = [
    "se_backward_fake", "se_blend_backward_fake", "se_blend_fake", "se_blend_ops", "se_blend_relu_sigmoid", "se_fake",
    "se_ops", "se_relu_sigmoid",
]


def se_relu_sigmoid(x, w1, b1, w2, b2):
    """SE with a ReLU and a sigmoid in PyTorch ops, from the parameters: ``(out, g)``. The formula of
    the ``convattn_se`` kernels, differentiated by autograd where they cannot be (gradients of gradients)."""
    z = x.mean((2, 3))
    g = torch.sigmoid(F.linear(torch.relu(F.linear(z, w1.flatten(1), b1)), w2.flatten(1), b2))
    return x * g[:, :, None, None], g


def se_fake(x, w1, b1, w2, b2):
    """Shapes of ``convattn_se::forward``: ``(out, g, z, hidden)``."""
    b, c = x.shape[:2]
    return torch.empty_like(x), x.new_empty(b, c), x.new_empty(b, c), x.new_empty(b, w1.shape[0])


def se_backward_fake(x, dout, w1, b1, w2, b2, g, z, hidden, need_dx):
    """Shapes of ``convattn_se::backward``: ``(dx, dw1, db1, dw2, db2)``."""
    r, c = w1.shape[0], x.shape[1]
    return (
        torch.empty_like(x) if need_dx else x.new_empty(0),
        x.new_empty(r, c),
        x.new_empty(r if b1 is not None else 0),
        x.new_empty(c, r),
        x.new_empty(c if b2 is not None else 0),
    )


def se_blend_relu_sigmoid(x, gamma, w1, b1, w2, b2):
    """The identity blend ``x + γ (SE(x) − x)`` as the ``convattn_se_blend`` kernels compute it, ``x · s``
    with ``s = 1 + γ (g − 1)``: ``(out, g)``."""
    _, g = se_relu_sigmoid(x, w1, b1, w2, b2)
    return x * (1 + gamma.reshape(()) * (g - 1))[:, :, None, None], g


def se_blend_fake(x, gamma, w1, b1, w2, b2):
    """Shapes of ``convattn_se_blend::forward``: those of ``convattn_se::forward``."""
    return se_fake(x, w1, b1, w2, b2)


def se_blend_backward_fake(x, dout, gamma, w1, b1, w2, b2, g, z, hidden, need_dx):
    """Shapes of ``convattn_se_blend::backward``: ``(dx, dgamma, dw1, db1, dw2, db2)``."""
    dx, *dparams = se_backward_fake(x, dout, w1, b1, w2, b2, g, z, hidden, need_dx)
    return (dx, torch.empty_like(gamma), *dparams)


_register_se = layer_op_registrar("convattn_se", se_relu_sigmoid, se_fake, se_backward_fake)
_register_blend = layer_op_registrar("convattn_se_blend", se_blend_relu_sigmoid, se_blend_fake, se_blend_backward_fake)


def _register(ops: Any) -> None:
    _register_se(ops)
    _register_blend(ops)


def se_ops() -> Any:
    """The ``torch.ops.convattn_se`` namespace (whole-layer SE kernels), or ``None`` where unavailable."""
    return kernels.load("convattn_se", _register)


def se_blend_ops() -> Any:
    """The ``torch.ops.convattn_se_blend`` namespace (SE's kernels computing the identity blend
    ``x + γ (SE(x) − x)``, built in the same library), or ``None`` where unavailable."""
    return None if se_ops() is None else torch.ops.convattn_se_blend
