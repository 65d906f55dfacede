"""``torch.library`` registration shared by the kernel layers (SE, CBAM): the fake and autograd
formulas of a whole-layer op pair, the autograd fallback for gradients of gradients, and ``call``.

The C++ side (schemas and CPU kernels) is built and loaded by :mod:`convattn.layers.kernels`; the
layers decide whether to take an op with :func:`convattn.layers.modes.kernels_may_run`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

__all__ = ["autograd_backward", "call", "layer_op_registrar"]


def autograd_backward(formula: Callable, inputs: tuple, need: tuple, grads: tuple) -> tuple:
    """The backward of a kernel op where the kernel backward cannot serve: gradients of
    ``formula(*inputs)`` (the op's formula in PyTorch ops, returning the op's differentiable outputs)
    for the ``inputs`` marked in ``need``, given the output gradients ``grads`` (``None`` where
    absent). Called with grad mode on (the backward of a ``create_graph=True`` pass) the result is
    itself differentiable, so gradients of gradients reach every input and parameter."""
    wanted = [t for t, n in zip(inputs, need) if n]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        pairs = [(o, d) for o, d in zip(formula(*inputs), grads) if d is not None]
        result = iter(
            torch.autograd.grad(
                [o for o, _ in pairs], wanted, [d for _, d in pairs], create_graph=create_graph, allow_unused=True
            )
        )
    return tuple(next(result) if n else None for n in need)


def layer_op_registrar(library: str, formula: Callable, fake: Callable, backward_fake: Callable) -> Callable[[Any], None]:
    """The ``register`` of :func:`convattn.layers.kernels.load` for a whole-layer op pair:
    ``library::forward(x, *params) -> (out, *saved)`` and its kernel backward
    ``library::backward(x, dout, *params, *saved, need_dx) -> (dx, *dparams)``.

    ``saved`` (the gates, which layers record detached, and intermediates) is not differentiable.
    The kernel backward runs when no graph of the gradient is asked for; otherwise (``create_graph=True``)
    autograd differentiates ``formula(x, *params)`` (the op in PyTorch ops; its first output is ``out``),
    so gradients of gradients reach every input. ``fake`` / ``backward_fake`` give the ops' shapes.
    """

    def setup_context(ctx, inputs, output):
        ctx.num_inputs = len(inputs)
        ctx.save_for_backward(*inputs, *output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)

    def backward(ctx, dout, *_):
        saved, need = ctx.saved_tensors, ctx.needs_input_grad
        inputs, extra = saved[: ctx.num_inputs], saved[ctx.num_inputs :]
        if dout is None:
            return (None,) * len(inputs)
        if not torch.is_grad_enabled():
            # dispatched in full (not `call`): when a backward is traced (AOT autograd), its fake
            # tensors must reach the op's fake formula
            op = getattr(torch.ops, library).backward.default
            grads = op(inputs[0], dout, *inputs[1:], *extra, need[0])
            return tuple(d.view_as(t) if n else None for d, t, n in zip(grads, inputs, need))
        return autograd_backward(formula, inputs, need, (dout,))

    def register(ops) -> None:
        torch.library.register_fake(f"{library}::forward", fake)
        torch.library.register_fake(f"{library}::backward", backward_fake)
        torch.library.register_autograd(f"{library}::forward", backward, setup_context=setup_context)

    return register


_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)


def call(op: Any, *args: Any) -> Any:
    """Run a kernel op taken by :func:`convattn.layers.modes.kernels_may_run`. Where no gradient is to
    be recorded (grad mode off, or no argument requiring one) its CPU kernel is called directly, without
    the detour through the Python autograd formula that the dispatcher would take only to find nothing
    to record."""
    if torch.is_grad_enabled() and any(isinstance(a, torch.Tensor) and a.requires_grad for a in args):
        return op(*args)
    return op.redispatch(_CPU, *args)
