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

__all__ = ["se_backward_fake", "se_fake", "se_ops", "se_relu_sigmoid"]


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


_register = layer_op_registrar("convattn_se", se_relu_sigmoid, se_fake, se_backward_fake)


def se_ops() -> Any:
    """The ``torch.ops.convattn_se`` namespace (whole-layer SE kernels), or ``None`` where unavailable."""
    return kernels.load("convattn_se", _register)
