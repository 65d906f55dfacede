"""SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks (Yang, Zhang, Li, Xie; ICML 2021). https://proceedings.mlr.press/v139/yang21o.html"""

from __future__ import annotations

import torch

from ..exceptions import ConfigError
from ..registry import register_attn
from ._helpers import check_channels, check_input
from ._recording import RecordsAttention

__all__ = ["SimAM"]


@register_attn(
    "simam",
    kind="gate",
    paper="SimAM: A Simple, Parameter-Free Attention Module for Convolutional Neural Networks, Yang et al., ICML 2021",
)
class SimAM(RecordsAttention):
    """SimAM: weight each neuron by the inverse of its minimal energy, no parameters.

    For every channel, with ``μ`` and ``σ² = Σ (x - μ)² / n`` over its ``n + 1 = H·W``
    positions, the inverse minimal energy of neuron ``t`` is (Eq. 16)::

        1 / e*_t = (t - μ)² / (4 (σ² + λ)) + 1/2

    and the output is ``x ⊙ sigmoid(1 / e*)`` (Eq. 17). On a ``1×1`` map (``n = 0``)
    ``σ²`` is taken as 0, so every weight is ``sigmoid(1/2)``.

    Args:
        channels: input channels C (only checked; the layer has no parameters).
        e_lambda: the regulariser λ (1e-4 in the paper).

    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the weights ``(B, C, H, W)``.

    Example:
        >>> import torch
        >>> layer = SimAM(16)
        >>> layer(torch.randn(2, 16, 7, 9)).shape
        torch.Size([2, 16, 7, 9])
    """

    def __init__(self, channels: int, *, e_lambda: float = 1e-4) -> None:
        super().__init__()
        self.channels = check_channels("SimAM", channels)
        if isinstance(e_lambda, bool) or not isinstance(e_lambda, (int, float)) or e_lambda <= 0:
            raise ConfigError(f"SimAM expects e_lambda > 0, got {e_lambda!r}")
        self.e_lambda = float(e_lambda)

    def extra_repr(self) -> str:
        return f"{self.channels}, e_lambda={self.e_lambda}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input("SimAM", x, self.channels)
        hw = x.shape[2] * x.shape[3]
        n = hw - 1 + (hw == 1)  # max(H·W - 1, 1), written so that torch.fx can trace it
        d = (x - x.mean(dim=(2, 3), keepdim=True)).square()
        w = torch.sigmoid(d / (4 * (d.sum(dim=(2, 3), keepdim=True) / n + self.e_lambda)) + 0.5)
        if self.recording:
            self.emit("", w)
        return x * w
