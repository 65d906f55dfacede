"""Batch norm for per-sample vectors (the ``(B, C, 1, 1)`` tensors after global pooling).

SK, split attention, BAM, coordinate attention and Gather-Excite normalise pooled
descriptors. With a training batch of one such a tensor has a single value per channel,
and ``nn.BatchNorm2d`` raises; with an empty batch (B = 0) there is no value at all.
:class:`PooledBatchNorm2d` then normalises with the running statistics and leaves them
(and ``num_batches_tracked``) untouched, so these layers train at batch size one, and
pass an empty batch through as an empty output, like the rest of the library. Every
other input is plain ``nn.BatchNorm2d``, with the same parameters, buffers and
``state_dict`` keys.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .modes import is_fx_proxy

__all__ = ["PooledBatchNorm2d", "resolve_norm"]


class PooledBatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` that uses running statistics, without updating them, when a training
    batch has one value per channel or none (B = 0: the output is empty too).

    Example:
        >>> import torch
        >>> bn = PooledBatchNorm2d(8).train()
        >>> bn(torch.randn(1, 8, 1, 1)).shape
        torch.Size([1, 8, 1, 1])
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if not is_fx_proxy(input):  # symbolic tracing: no shape to check
            super()._check_input_dim(input)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # An FX graph takes the ordinary batch-norm path (a proxy has no batch size).
        traced = is_fx_proxy(x)
        if self.training and self.running_mean is not None and not traced and x.numel() <= x.shape[1]:
            return F.batch_norm(
                x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps
            )
        return super().forward(x)


def resolve_norm(norm: type[nn.Module]) -> type[nn.Module]:
    """Swap ``nn.BatchNorm2d`` for :class:`PooledBatchNorm2d`; leave every other class alone."""
    return PooledBatchNorm2d if norm is nn.BatchNorm2d else norm
