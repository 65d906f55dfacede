"""Execution modes: which workflow a layer is running in, and so which of its paths it may take.

The only module in convattn that asks torch which mode it is in. Each mode is detected one way:

- FX symbolic tracing (``torch.fx.symbolic_trace``, torchvision's ``create_feature_extractor``):
  the input is a ``torch.fx.Proxy`` (:func:`is_fx_proxy`).
- ``torch.compile`` / ``torch.export`` tracing: ``torch.compiler.is_compiling()``.
- ``torch.jit.trace``, and so ONNX export with ``dynamo=False``: ``torch.jit.is_tracing()``.
- ``torch.func`` transforms (``grad``, ``vmap``, ``jvp``, ...): functorch's interpreter stack is
  not empty (:func:`_functorch_transforms` lists it).
- Forward-mode AD (:func:`forward_mode_ad`): a ``torch.autograd.forward_ad`` dual level is entered,
  or a ``torch.func`` forward-mode transform (``jvp``, ``jacfwd``, ``linearize``) is on the stack.
- Dispatch modes (``FlopCounterMode``, fake tensors, memory trackers): one is active.
- CPU autocast: ``torch.is_autocast_enabled("cpu")``.

The questions the layers ask, and why their answers differ on purpose:

- :func:`is_symbolic` (FX, compile/export, jit.trace): values have no concrete shape, and a
  check would be baked into the traced program, so input checks step aside. Only here.
  Under ``torch.func`` or a dispatch mode shapes are concrete, so checks still run.
- :func:`must_run_plain` (the symbolic modes, ``torch.func``, forward-mode AD, CPU autocast,
  dispatch modes): a tool must see, transform or cast the PyTorch ops a layer computes, so no
  hand-written kernel or shortcut that only eager CPU autograd understands may run.
- :func:`kernels_may_run`: the C++ kernels, where they are exactly right: a plain CPU
  float32/float64 tensor and parameters of its dtype, outside every mode of :func:`must_run_plain`.
- :func:`fused_attention_may_run`: SDPA may pick its fused (flash / memory-efficient) kernels,
  which have no forward-mode AD formulas: everywhere but under :func:`forward_mode_ad`, where
  attention runs SDPA's math backend instead.
- :func:`double_backward_wrapper_may_run`: SDPA inside convattn's twice-differentiable autograd
  function. Unlike the kernels it is allowed under CPU autocast (SDPA inside it is cast by torch's
  own rules, as it would be outside), and it is for eager reverse-mode autograd only: with no
  gradient to record, or under any tool of :func:`must_run_plain` but autocast, plain SDPA is called.
"""

from __future__ import annotations

import torch
from torch._C._functorch import TransformType, peek_interpreter_stack
from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters
from torch.utils._python_dispatch import _get_current_dispatch_mode

__all__ = [
    "double_backward_wrapper_may_run",
    "forward_mode_ad",
    "fused_attention_may_run",
    "is_fx_proxy",
    "is_symbolic",
    "kernels_may_run",
    "must_run_plain",
]


def is_fx_proxy(x: object) -> bool:
    """Whether ``x`` is a ``torch.fx.Proxy`` (FX symbolic tracing): no concrete shape or values."""
    return isinstance(x, torch.fx.Proxy)


def is_symbolic(x: object = None) -> bool:
    """Whether the layer runs under a tracer rather than on real tensors: ``x`` is an FX proxy, or
    ``torch.compile`` / ``torch.export`` or ``torch.jit.trace`` (and so ONNX export) is tracing.
    Input checks are skipped there."""
    return is_fx_proxy(x) or torch.compiler.is_compiling() or torch.jit.is_tracing()


def _functorch_transforms() -> list[TransformType]:
    """The ``torch.func`` transforms in force, outermost first (empty outside them)."""
    if peek_interpreter_stack() is None:
        return []
    return [interpreter.key() for interpreter in retrieve_all_functorch_interpreters()]


def forward_mode_ad() -> bool:
    """Whether forward-mode AD is on: a ``torch.autograd.forward_ad`` dual level, or a ``torch.func``
    ``jvp`` (also under ``jacfwd``, ``linearize``, ``hessian``). False while ``torch.compile`` traces:
    the compiler applies its transforms to the traced ops itself."""
    if torch.compiler.is_compiling():
        return False
    return torch.autograd.forward_ad._current_level >= 0 or TransformType.Jvp in _functorch_transforms()


def _transformed() -> bool:
    """A ``torch.func`` transform, forward-mode AD or a dispatch mode is active. (Its callers also
    ask :func:`is_symbolic`, so forward-mode AD under ``torch.compile`` needs no exception here; this
    runs on every kernel layer's call, so it asks torch's cheapest questions only.)"""
    return (
        peek_interpreter_stack() is not None
        or torch.autograd.forward_ad._current_level >= 0
        or _get_current_dispatch_mode() is not None
    )


def must_run_plain(x: object = None) -> bool:
    """Whether a layer must run plain PyTorch ops whatever its input: :func:`is_symbolic`, a
    ``torch.func`` transform, forward-mode AD, CPU autocast, or a dispatch mode, so that those
    tools see, transform or cast what is computed."""
    return is_symbolic(x) or torch.is_autocast_enabled("cpu") or _transformed()


def kernels_may_run(x: torch.Tensor, params: tuple[torch.Tensor | None, ...]) -> bool:
    """Whether the C++ CPU kernels take ``x``: a plain (not subclassed, not an FX proxy) CPU
    float32/float64 tensor, contiguous or channels-last, with every parameter (``None`` for an absent
    bias) a CPU tensor of the same dtype, outside the modes of :func:`must_run_plain`. Anything else
    (another device for the input or for a parameter, mixed dtypes) runs the PyTorch-op path, where
    torch reports device and dtype mismatches itself."""
    if not isinstance(x, torch.Tensor):
        return False
    dtype = x.dtype
    if (
        not x.is_cpu
        or (dtype is not torch.float32 and dtype is not torch.float64)
        or x.layout != torch.strided
        or not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last))
    ):
        return False
    for q in params:
        if q is not None and (q.dtype is not dtype or not q.is_cpu):
            return False
    return not torch.overrides.has_torch_function((x, *(q for q in params if q is not None))) and not must_run_plain()


def fused_attention_may_run() -> bool:
    """Whether SDPA may pick its fused kernels: not under :func:`forward_mode_ad` (they have no
    forward-mode formulas; SDPA's math backend has). Tracers choose for themselves."""
    return is_symbolic() or not forward_mode_ad()


def double_backward_wrapper_may_run(*tensors: torch.Tensor | None) -> bool:
    """Whether SDPA may run inside convattn's twice-differentiable autograd function: eager
    reverse-mode autograd (grad mode on, a tensor requiring a gradient) on plain tensors, outside
    tracers, ``torch.func`` transforms, forward-mode AD and dispatch modes. CPU autocast is allowed."""
    present = [t for t in tensors if t is not None]
    return (
        torch.is_grad_enabled()
        and any(t.requires_grad for t in present)
        and not is_symbolic()
        and not _transformed()
    )
