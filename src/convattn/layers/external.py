"""Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks (Guo, Liu, Mu, Hu; 2021). https://arxiv.org/abs/2105.02358"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input, get_layer
from ._recording import RecordsAttention

__all__ = ["ExternalAttention"]


@register_attn(
    "external",
    kind="gate",
    paper="Beyond Self-attention: External Attention using Two Linear Layers for Visual Tasks, Guo et al., arXiv 2021",
)
class ExternalAttention(RecordsAttention):
    """External attention: positions attend to S learned memory units instead of to each other.

    With ``F`` the ``N × C`` features (after a 1×1 input convolution) and the two
    memories ``M_k, M_v ∈ R^{S×C}`` (Eq. 5-6)::

        α̃ = F M_kᵀ,     α̂_{i,j} = exp(α̃_{i,j}) / Σ_k exp(α̃_{k,j})     (softmax over the N positions)
        α_{i,j} = α̂_{i,j} / Σ_k α̂_{i,k}                                  (L1 over the S memory units)
        F_out = α M_v

    As in the paper's segmentation code (EANet), the module around the attention is
    ``act(x + norm(conv₂(F_out)))`` with ``F = conv₁(x)``: a 1×1 convolution with bias
    before, a 1×1 convolution without bias and a batch norm after, a residual
    connection and a ReLU. ``M_v`` is initialised to ``M_kᵀ`` (tied at the start, not
    shared) and every convolution ``N(0, 2/(k²·out))``, as in that code. Pass
    ``act_layer=None`` to drop the final ReLU. The multi-head variant (EAMLP) is not
    implemented. Cost is O(N·S·C): linear in the number of positions.

    Args:
        channels: input channels C.
        memory_size: number of memory units S (64 in the paper).
        eps: added to the L1 denominator (1e-9, the paper's code).
        norm_layer: the norm after the output convolution.
        act_layer: the activation after the residual sum (ReLU in the paper's code).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the double-normalised attention
        ``(B, S, H, W)`` (it sums to 1 over S at every position).

    Example:
        >>> import torch
        >>> layer = ExternalAttention(16, memory_size=64)
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(
        self,
        channels: int,
        *,
        memory_size: int = 64,
        eps: float = 1e-9,
        norm_layer: str | type[nn.Module] | None = "bn",
        act_layer: str | type[nn.Module] | None = "relu",
    ) -> None:
        super().__init__()
        self.channels = check_channels("ExternalAttention", channels)
        if isinstance(memory_size, bool) or not isinstance(memory_size, int) or memory_size <= 0:
            raise ConfigError(f"ExternalAttention expects memory_size to be a positive int, got {memory_size!r}")
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or eps < 0:
            raise ConfigError(f"ExternalAttention expects eps >= 0, got {eps!r}")
        self.memory_size = memory_size
        self.eps = float(eps)
        self.conv_in = nn.Conv2d(channels, channels, 1)
        self.mk = nn.Conv2d(channels, memory_size, 1, bias=False)
        self.mv = nn.Conv2d(memory_size, channels, 1, bias=False)
        self.conv_out = nn.Conv2d(channels, channels, 1, bias=False)
        norm = get_layer(norm_layer, owner="ExternalAttention", arg="norm_layer")
        self.norm = norm() if norm is nn.Identity else norm(channels)
        self.act = get_layer(act_layer, owner="ExternalAttention", arg="act_layer")()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for conv in (self.conv_in, self.mk, self.conv_out):
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / conv.out_channels))
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        with torch.no_grad():
            self.mv.weight.copy_(self.mk.weight.transpose(0, 1))
        if hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("ExternalAttention", x, self.channels)
        attn = self.mk(self.conv_in(x))  # (B, S, H, W)
        b, s, h, w = attn.shape
        attn = attn.reshape(b, s, h * w).softmax(dim=-1)
        attn = (attn / (self.eps + attn.sum(dim=1, keepdim=True))).reshape(b, s, h, w)
        if self.recording:
            self.emit("", attn)
        out = x + self.norm(self.conv_out(self.mv(attn)))
        if type(self.act) is nn.ReLU:
            # ReLU as a select: its backward keeps the mask, not the output, so the caller may modify
            # the result in place (a ResNet block adds its shortcut with `+=`)
            return torch.where(out > 0, out, 0.0)
        return self.act(out)
