"""Attend and Rectify: a Gated Attention Mechanism for Fine-Grained Recovery
(Rodríguez, Gonfaus, Cucurull, Roca, Gonzàlez; ECCV 2018). https://arxiv.org/abs/1807.07320

Multi-head attention pooling of a feature map (the paper's attention heads: per-head
spatial attention from a 1×1 convolution, softmax over positions, weighted sum of
features) and, for feature vectors, a multi-head sigmoid-gated attention head in the
style of Squeeze-and-Excitation gating (Hu et al., CVPR 2018, https://arxiv.org/abs/1709.01507).
"""

from __future__ import annotations

import torch
from torch import nn

from ..exceptions import ConfigError, DTypeError, ShapeError
from ..registry import register_attn
from ._helpers import check_channels, check_choice, check_input, get_layer
from .modes import is_symbolic
from ._recording import RecordsAttention

__all__ = ["AttentionPool2d", "GatedAttentionHead"]


def _check_int(layer: str, arg: str, value: object, allow_none: bool = False) -> None:
    if allow_none and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{layer} expects {arg} to be a positive int, got {value!r}")


@register_attn(
    "attn_pool",
    kind="pool",
    paper="Attend and Rectify: a Gated Attention Mechanism for Fine-Grained Recovery, "
    "Rodríguez et al., ECCV 2018",
)
class AttentionPool2d(RecordsAttention):
    """Multi-head attention pooling ``(B, C, H, W) -> (B, heads·C)`` or ``(B, out_dim)``.

    A 1×1 convolution gives one logit map ``z_k`` per head ``k``; the head's weights
    over the ``N = H·W`` positions are

    - ``mode="softmax"``: ``a_k = softmax_N(z_k)`` (the paper's attention heads);
    - ``mode="sigmoid"``: independent gates ``g_k = σ(z_k)``, normalised by their sum
      (``normalize="sum"``: ``a_k = g_k / Σ_N g_k``, a weighted mean) or by the number
      of positions (``normalize="mean"``: ``a_k = g_k / N``, gated average pooling,
      so fully closed gates give zero).

    Each head pools ``o_k = Σ_n a_k[n] x[:, n]`` (C values); the heads are concatenated
    head-major (``[o_1, …, o_K]``) and, if ``out_dim`` is given, mapped by a linear layer.
    The logit convolution starts at zero, so every head starts as global average
    pooling (both modes, ``normalize="sum"``).

    Args:
        channels: input channels C.
        num_heads: number of attention heads K.
        mode: ``"softmax"`` or ``"sigmoid"``.
        normalize: for ``mode="sigmoid"``: ``"sum"`` or ``"mean"`` (ignored for softmax).
        out_dim: width of an output linear layer; ``None`` returns ``K·C`` values.

    Shape:
        ``(B, C, H, W) -> (B, K·C)`` or ``(B, out_dim)``. Records the weights
        ``a`` (softmax) or gates ``g`` (sigmoid) as ``(B, K, H, W)``.

    Example:
        >>> import torch
        >>> pool = AttentionPool2d(64, num_heads=4)
        >>> pool(torch.randn(2, 64, 7, 9)).shape
        torch.Size([2, 256])
        >>> AttentionPool2d(64, num_heads=2, out_dim=10)(torch.randn(2, 64, 5, 5)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        channels: int,
        *,
        num_heads: int = 4,
        mode: str = "softmax",
        normalize: str = "sum",
        out_dim: int | None = None,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        _check_int(name, "num_heads", num_heads)
        _check_int(name, "out_dim", out_dim, allow_none=True)
        check_choice(name, "mode", mode, ["softmax", "sigmoid"])
        check_choice(name, "normalize", normalize, ["sum", "mean"])
        self.num_heads, self.mode, self.normalize = num_heads, mode, normalize
        self.out_dim = out_dim if out_dim is not None else num_heads * channels
        self.logits = nn.Conv2d(channels, num_heads, 1)
        self.fc = nn.Linear(num_heads * channels, out_dim) if out_dim is not None else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.logits.weight)
        nn.init.zeros_(self.logits.bias)
        if self.fc is not None:
            self.fc.reset_parameters()

    def attention_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(a, shown)``: pooling weights ``(B, K, N)`` and the map to show (``a`` or the gates)."""
        z = self.logits(x).flatten(2)
        if self.mode == "softmax":
            a = z.softmax(dim=-1)
            return a, a
        g = torch.sigmoid(z)
        if self.normalize == "sum":
            return g / g.sum(dim=-1, keepdim=True).clamp_min(1e-12), g
        return g / z.shape[-1], g

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(type(self).__name__, x, self.channels)
        a, shown = self.attention_weights(x)
        if self.recording:
            self.emit("", shown.reshape(x.shape[0], self.num_heads, x.shape[2], x.shape[3]))
        pooled = torch.matmul(a, x.flatten(2).transpose(1, 2))  # (B, K, C)
        out = pooled.flatten(1)
        return self.fc(out) if self.fc is not None else out


class GatedAttentionHead(RecordsAttention):
    """Multi-head sigmoid-gated attention on feature vectors ``(B, D)``.

    Each head ``k`` gates the input feature-wise, ``y_k = x ⊙ σ(W_k x + b_k)``
    (Squeeze-and-Excitation's gate applied to a vector, one gate vector per head);
    the heads are concatenated, dropout is applied, and a linear layer maps the
    ``K·D`` values to ``out_features``. With one head and ``out_features=None`` the
    output is the gated vector itself (no linear layer).

    Args:
        in_features: input width D.
        out_features: output width; ``None`` means D.
        num_heads: number of gate heads K.
        dropout: dropout probability on the concatenated heads.
        gate_layer: the gate σ.
        bias: whether the gate and output layers have biases.

    Shape:
        ``(B, D) -> (B, out_features)``. Records the gates ``(B, K, D)``.

    Example:
        >>> import torch
        >>> head = GatedAttentionHead(128, num_heads=4, out_features=64, dropout=0.1)
        >>> head(torch.randn(8, 128)).shape
        torch.Size([8, 64])
    """

    def __init__(
        self,
        in_features: int,
        *,
        out_features: int | None = None,
        num_heads: int = 4,
        dropout: float = 0.0,
        gate_layer: str | type[nn.Module] = "sigmoid",
        bias: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        _check_int(name, "in_features", in_features)
        _check_int(name, "out_features", out_features, allow_none=True)
        _check_int(name, "num_heads", num_heads)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ConfigError(f"{name} expects dropout in [0, 1), got {dropout!r}")
        self.in_features, self.num_heads = in_features, num_heads
        self.out_features = out_features if out_features is not None else in_features
        self.gates = nn.Linear(in_features, num_heads * in_features, bias=bias)
        self.gate = get_layer(gate_layer, owner=name, arg="gate_layer")()
        self.drop = nn.Dropout(dropout)
        needs_proj = num_heads > 1 or out_features is not None
        self.proj = nn.Linear(num_heads * in_features, self.out_features, bias=bias) if needs_proj else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.gates.reset_parameters()
        if self.proj is not None:
            self.proj.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        if not is_symbolic(x):
            if not isinstance(x, torch.Tensor):
                raise DTypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
            if x.dim() != 2 or x.shape[1] != self.in_features:
                raise ShapeError(
                    f"{name} expects input of shape (B, {self.in_features}), got {tuple(x.shape)}"
                )
            if not x.is_floating_point():
                raise DTypeError(f"{name} expects a floating-point input, got {x.dtype}")
        g = self.gate(self.gates(x)).view(x.shape[0], self.num_heads, self.in_features)
        if self.recording:
            self.emit("", g)
        y = self.drop((x[:, None, :] * g).flatten(1))
        return self.proj(y) if self.proj is not None else y
