"""Cost of one module on one input: parameters, FLOPs, latency, throughput, peak memory.

What is counted, and what is not:

- **FLOPs** come from :class:`torch.utils.flop_counter.FlopCounterMode`, which
  counts matrix products and convolutions only (``mm``, ``bmm``, ``addmm``,
  ``convolution`` and their backward passes, and the attention kernels
  ``scaled_dot_product_*attention``, counted as the two matrix products
  ``Q Kᵀ`` and ``A V``: ``4·B·heads·Nq·Nk·d`` forward; torch's counter has no
  formula for the CPU flash kernel and would count it as 0, so convattn adds the
  same formula for it, forward and backward). One multiply-add is two
  FLOPs. Elementwise ops (gates, residual adds, activations), pooling, softmax,
  normalisation layers and ``grid_sample`` are **not** counted, so a purely
  elementwise layer (SimAM) reports 0 and a gate's FLOPs are those of its FCs/convs.
- **Latency** is wall-clock time of ``repeats`` timed calls after ``warmup``
  untimed ones (CUDA: synchronised before and after each call); the median, the
  minimum and the maximum are reported in milliseconds. Throughput is
  ``batch / median``.
- **Peak memory**: on CUDA, ``torch.cuda.max_memory_allocated`` during one pass
  minus the allocation before it. On CPU there is no allocator statistic, so the
  pass runs once under a dispatch-level tracker that adds up the storages of every
  tensor the pass creates and subtracts them when they are freed; the peak of that
  sum is reported (``memory_method="tensor-tracker"``). Tensors alive before the
  pass (weights, the input) are not included; scratch buffers that a kernel
  allocates internally and frees before returning are not seen.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Sequence

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

__all__ = [
    "count_params",
    "count_flops",
    "peak_memory",
    "time_fn",
    "measure_module",
    "output_loss",
]


def _as_tuple(inputs: Any) -> tuple:
    return inputs if isinstance(inputs, tuple) else (inputs,)


def _batch_size(inputs: Any) -> int:
    for t in tree_leaves(inputs):
        if isinstance(t, torch.Tensor) and t.dim() > 0:
            return int(t.shape[0])
    return 1


def count_params(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared parameters counted once)."""
    seen: set[int] = set()
    total = 0
    for p in module.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def _first_tensor(out: Any) -> torch.Tensor:
    """The tensor a loss is taken on: the tensor itself, ``logits``/``out`` of a dict, or the first tensor."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict):
        for key in ("logits", "out"):
            if isinstance(out.get(key), torch.Tensor):
                return out[key]
    for t in tree_leaves(out):
        if isinstance(t, torch.Tensor) and t.is_floating_point():
            return t
    raise TypeError(f"cannot find a floating-point tensor in the module output of type {type(out).__name__}")


def output_loss(out: Any, target: torch.Tensor | None = None) -> torch.Tensor:
    """Scalar loss used for timing backward passes.

    Cross-entropy against ``target`` when the output is ``(B, K)`` logits (or
    ``(B, K, H, W)`` maps with a ``(B, H, W)`` target), otherwise the mean of the
    output (a layer, whose backward cost does not depend on the loss).
    """
    t = _first_tensor(out)
    if target is not None and t.dim() >= 2 and target.dim() == t.dim() - 1:
        return nn.functional.cross_entropy(t.float(), target)
    return t.float().mean()


def _cpu_sdpa_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels, which ``FlopCounterMode`` does not know (it counts 0)."""
    try:
        from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count
    except ImportError:  # private helpers moved: count these kernels as torch does
        return {}
    aten = torch.ops.aten
    mapping = {}
    fwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    bwd = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if fwd is not None:
        def sdpa_cpu(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_flop_count(query_shape, key_shape, value_shape)

        mapping[fwd] = sdpa_cpu
    if bwd is not None:
        def sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
            return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)

        mapping[bwd] = sdpa_cpu_backward
    return mapping


def count_flops(module: nn.Module | Callable, inputs: Any, *, backward: bool = False) -> int:
    """FLOPs of one forward pass (or forward + backward) as counted by ``FlopCounterMode``.

    See the module docstring for what is and is not counted.

    Example:
        >>> import torch
        >>> conv = torch.nn.Conv2d(4, 8, 3, padding=1, bias=False)
        >>> count_flops(conv, torch.randn(2, 4, 5, 6)) == 2 * 2 * 8 * 5 * 6 * 4 * 9
        True
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_cpu_sdpa_formulas())
    grad_ctx = torch.enable_grad() if backward else torch.no_grad()
    with grad_ctx, counter:
        out = module(*_as_tuple(inputs))
        if backward:
            output_loss(out).backward()
    if backward and isinstance(module, nn.Module):
        module.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


class _TensorTracker(TorchDispatchMode):
    """Adds up the storages created under it, subtracting them once freed; keeps the peak."""

    def __init__(self) -> None:
        super().__init__()
        from torch.multiprocessing.reductions import StorageWeakRef

        self._weakref = StorageWeakRef
        self.live: dict[int, tuple[Any, int]] = {}
        self.current = 0
        self.peak = 0
        self._preexisting: set[int] = set()

    def ignore(self, tensors: Any) -> None:
        for t in tree_leaves(tensors):
            if isinstance(t, torch.Tensor):
                self._preexisting.add(t.untyped_storage()._cdata)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                storage = t.untyped_storage()
                key = storage._cdata
                if key in self.live or key in self._preexisting:
                    continue
                n = storage.nbytes()
                self.live[key] = (self._weakref(storage), n)
                self.current += n
        self.peak = max(self.peak, self.current)
        return out


def peak_memory(fn: Callable[[], Any], device: torch.device | str = "cpu", *, keep: Sequence[Any] = ()) -> tuple[int, str]:
    """Peak bytes allocated while ``fn()`` runs, above what was allocated before.

    Returns ``(bytes, method)``: ``"cuda-allocator"`` on CUDA, ``"tensor-tracker"``
    on CPU (see the module docstring).
    """
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = fn()
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return int(peak), "cuda-allocator"
    tracker = _TensorTracker()
    tracker.ignore(list(keep))
    with tracker:
        result = fn()
    del result
    return int(tracker.peak), "tensor-tracker"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_fn(fn: Callable[[], Any], *, repeats: int = 20, warmup: int = 3, device: torch.device | str = "cpu") -> dict[str, float]:
    """Time ``fn()``: ``{"median", "min", "max"}`` in milliseconds over ``repeats`` calls after ``warmup``."""
    if repeats < 1:
        raise ValueError(f"time_fn expects repeats >= 1, got {repeats}")
    device = torch.device(device)
    for _ in range(max(0, warmup)):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"median": statistics.median(times), "min": min(times), "max": max(times)}


def _device_of(module: nn.Module, inputs: Any) -> torch.device:
    for t in tree_leaves(inputs):
        if isinstance(t, torch.Tensor):
            return t.device
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def measure_module(
    module: nn.Module,
    inputs: Any,
    *,
    train: bool = False,
    repeats: int = 20,
    warmup: int = 3,
    target: torch.Tensor | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    memory: bool = True,
    flops: bool = True,
) -> dict[str, Any]:
    """Parameters, FLOPs, latency, throughput and peak memory of ``module(inputs)``.

    Args:
        module: the module, already on its device and dtype.
        inputs: a tensor or a tuple of positional inputs.
        train: time a training step (module in train mode: forward, loss
            :func:`output_loss`, backward, and ``optimizer.step()`` if given)
            instead of an inference forward (eval mode, ``torch.no_grad``).
        repeats: timed calls; the median, min and max are reported.
        warmup: untimed calls first.
        target: class labels for the loss of a training step.
        optimizer: stepped (after ``zero_grad``) in each training step.
        memory: measure peak memory (one extra pass).
        flops: count FLOPs (one extra pass).

    Returns:
        ``{"params", "flops", "latency_ms", "latency_min_ms", "latency_max_ms",
        "throughput", "peak_memory", "memory_method", "mode"}``; ``flops`` is the
        forward count for inference and forward + backward for a training step;
        ``throughput`` is samples per second; ``peak_memory`` is in bytes.

    Example:
        >>> import torch
        >>> r = measure_module(torch.nn.Conv2d(8, 8, 3, padding=1), torch.randn(2, 8, 6, 6), repeats=2, warmup=0)
        >>> r["flops"], r["latency_ms"] > 0
        (82944, True)
    """
    inputs = _as_tuple(inputs)
    device = _device_of(module, inputs)
    was_training = module.training
    module.train(train)

    if train:
        grad_inputs = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]

        def step() -> torch.Tensor:
            module.zero_grad(set_to_none=True)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            for t in grad_inputs:  # input gradients are computed each step, not accumulated
                t.grad = None
            loss = output_loss(module(*inputs), target)
            loss.backward()
            if optimizer is not None:
                optimizer.step()
            return loss.detach()
    else:
        def step() -> Any:
            with torch.no_grad():
                return module(*inputs)

    try:
        result: dict[str, Any] = {"mode": "train" if train else "infer", "params": count_params(module)}
        result["flops"] = count_flops(module, inputs, backward=train) if flops else None
        stats = time_fn(step, repeats=repeats, warmup=warmup, device=device)
        result["latency_ms"] = stats["median"]
        result["latency_min_ms"] = stats["min"]
        result["latency_max_ms"] = stats["max"]
        batch = _batch_size(inputs)
        result["throughput"] = batch / (stats["median"] / 1e3) if stats["median"] > 0 else math.inf
        if memory:
            keep = list(inputs) + list(module.parameters()) + list(module.buffers())
            if optimizer is not None:
                keep += [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor)]
            result["peak_memory"], result["memory_method"] = peak_memory(step, device, keep=keep)
        else:
            result["peak_memory"], result["memory_method"] = None, None
    finally:
        if train:
            module.zero_grad(set_to_none=True)
        module.train(was_training)
    return result
