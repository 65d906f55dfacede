"""Non-local Neural Networks (Wang, Girshick, Gupta, He; CVPR 2018). https://arxiv.org/abs/1711.07971

The non-local block (Eq. 1 and 6)::

    y_i = 1/C(x) Σ_j f(x_i, x_j) g(x_j),      z_i = W_z y_i + x_i

with ``g(x_j) = W_g x_j`` (1×1 convolution to ``inter_channels``) and the
pairwise functions of Sec. 3.2 (``mode``):

- ``"embedded_gaussian"``: ``f = exp(θ(x_i)ᵀ φ(x_j))``, ``C = Σ_j f``: a softmax.
- ``"gaussian"``: ``f = exp(x_iᵀ x_j)``, ``C = Σ_j f`` (θ and φ are the identity).
- ``"dot_product"``: ``f = θ(x_i)ᵀ φ(x_j)``, ``C = N`` (N: number of positions j).
- ``"concatenation"``: ``f = ReLU(w_fᵀ [θ(x_i); φ(x_j)])``, ``C = N``.

``W_z`` is followed by a BatchNorm whose scale and shift start at zero
(``bn_layer=True``), or is itself zero-initialised (``bn_layer=False``), so the
block is the identity at initialisation, as in the paper (Sec. 4.1).
``sub_sample=True`` max-pools φ and g by 2 in every spatial dimension (height and
width only for the 3-D block, as in the paper's video models).

Cost: the two Gaussian modes run fused scaled-dot-product attention (scale 1,
memory O(N)); dot-product uses associativity, ``θ (φᵀ g) / N`` (memory O(N));
concatenation is inherently pairwise and is computed over blocks of queries so
that at most ~4M pairwise terms are held at once. Each mode builds its explicit
N×N matrix only while recording.

Compared with timm's ``NonLocalAttn``: that is the embedded-Gaussian block without
sub-sampling, with bias-carrying convolutions and logits scaled by ``C^-1/2`` by
default (``use_scale=True``); with ``use_scale=False`` it computes the same
function as ``NonLocal2d(mode="embedded_gaussian", sub_sample=False)`` (tested).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError, ShapeError
from ..registry import register_attn
from ._helpers import check_channels, check_choice, check_input
from .modes import is_symbolic
from ._recording import RecordsAttention
from .functional import attention

# One call in torch.fx graphs: its shape arithmetic runs on real tensors at run time.
torch.fx.wrap("attention")

__all__ = ["NonLocal1d", "NonLocal2d", "NonLocal3d", "MODES"]

_PAPER = "Non-local Neural Networks, Wang et al., CVPR 2018"
MODES = ("embedded_gaussian", "gaussian", "dot_product", "concatenation")
_PAIRWISE_BUDGET = 1 << 22  # pairwise terms held at once by the concatenation mode

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_NORM = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL = {1: (nn.MaxPool1d, 2), 2: (nn.MaxPool2d, 2), 3: (nn.MaxPool3d, (1, 2, 2))}


class _NonLocalNd(RecordsAttention):
    _dims = 2

    def __init__(
        self,
        channels: int,
        *,
        inter_channels: int | None = None,
        mode: str = "embedded_gaussian",
        sub_sample: bool = False,
        bn_layer: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        self.channels = check_channels(name, channels)
        check_choice(name, "mode", mode, MODES)
        if inter_channels is None:
            inter_channels = max(1, channels // 2)
        if isinstance(inter_channels, bool) or not isinstance(inter_channels, int) or inter_channels <= 0:
            raise ConfigError(f"{name} expects inter_channels to be a positive int, got {inter_channels!r}")
        self.mode = mode
        self.inter_channels = inter_channels
        self.sub_sample = bool(sub_sample)
        conv = _CONV[self._dims]
        self.g = conv(channels, inter_channels, 1)
        if mode == "gaussian":
            self.theta = self.phi = None
        else:
            self.theta = conv(channels, inter_channels, 1)
            self.phi = conv(channels, inter_channels, 1)
        self.concat_project = nn.Linear(2 * inter_channels, 1, bias=False) if mode == "concatenation" else None
        pool, k = _POOL[self._dims]
        self.pool = pool(k) if sub_sample else None
        self.W = conv(inter_channels, channels, 1)
        self.bn = _NORM[self._dims](channels) if bn_layer else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.g, self.theta, self.phi, self.concat_project, self.W):
            if m is not None:
                m.reset_parameters()
        if self.bn is not None:
            self.bn.reset_parameters()
            nn.init.zeros_(self.bn.weight)
            nn.init.zeros_(self.bn.bias)
        else:
            nn.init.zeros_(self.W.weight)
            nn.init.zeros_(self.W.bias)

    def _check_sub_sample(self, x: torch.Tensor) -> None:
        if self.pool is None or is_symbolic(x):
            return
        pooled = x.shape[2:] if self._dims < 3 else x.shape[3:]
        if min(pooled) < 2:
            raise ShapeError(
                f"{type(self).__name__}(sub_sample=True) max-pools by 2, so it expects every pooled "
                f"spatial size >= 2, got input of shape {tuple(x.shape)}"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        name = type(self).__name__
        check_input(name, x, self.channels, ndim=self._dims + 2)
        self._check_sub_sample(x)
        spatial = x.shape[2:]

        def tokens(t: torch.Tensor, pool: bool = False) -> torch.Tensor:
            if pool and self.pool is not None:
                t = self.pool(t)
            return t.flatten(2).transpose(1, 2)  # (B, positions, channels)

        g = tokens(self.g(x), pool=True)
        if self.theta is None:  # gaussian: θ and φ are the identity
            theta, phi = tokens(x), tokens(x, pool=True)
        else:
            theta, phi = tokens(self.theta(x)), tokens(self.phi(x), pool=True)

        attn = None
        if self.mode in ("embedded_gaussian", "gaussian"):
            y, attn = attention(theta, phi, g, scale=1.0, need_weights=self.recording)
        elif self.mode == "dot_product":
            n = phi.shape[1]
            if self.recording:
                attn = torch.matmul(theta, phi.transpose(1, 2)) / n
                y = torch.matmul(attn, g)
            else:  # θ (φᵀ g) / N: a (d × d) matrix instead of an N × N one
                y = torch.matmul(theta, torch.matmul(phi.transpose(1, 2), g) / n)
        else:
            y, attn = self._concatenation(theta, phi, g)
        if attn is not None:
            self.emit("", attn)
        y = y.transpose(1, 2).unflatten(2, spatial)
        z = self.W(y)
        if self.bn is not None:
            z = self.bn(z)
        return x + z

    def _concatenation(
        self, theta: torch.Tensor, phi: torch.Tensor, g: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        # w_fᵀ[θ_i; φ_j] = w_θᵀθ_i + w_φᵀφ_j: two scalars per position, summed pairwise.
        w = self.concat_project.weight.view(-1)
        d = theta.shape[-1]
        a = torch.matmul(theta, w[:d]).unsqueeze(-1)  # (B, N, 1)
        c = torch.matmul(phi, w[d:]).unsqueeze(1)  # (B, 1, M)
        m = phi.shape[1]
        if self.recording:
            attn = F.relu(a + c) / m
            return torch.matmul(attn, g), attn
        n = theta.shape[1]
        step = max(1, _PAIRWISE_BUDGET // max(1, theta.shape[0] * m))
        if step >= n:
            return torch.matmul(F.relu(a + c) / m, g), None
        parts = [torch.matmul(F.relu(a[:, i : i + step] + c) / m, g) for i in range(0, n, step)]
        return torch.cat(parts, 1), None


_ARGS_DOC = """
    Args:
        channels: input channels C.
        inter_channels: width of θ, φ and g (``C // 2`` by default, as in the paper).
        mode: pairwise function: ``"embedded_gaussian"``, ``"gaussian"``,
            ``"dot_product"`` or ``"concatenation"``.
        sub_sample: max-pool φ and g by 2 (then every pooled size must be >= 2).
        bn_layer: BatchNorm after ``W_z``, zero-initialised; otherwise ``W_z`` is
            zero-initialised. Either way the block starts as the identity.
"""


@register_attn("non_local", kind="gate", paper=_PAPER, ndim=4)
class NonLocal2d(_NonLocalNd):
    __doc__ = (
        """Non-local block over the H×W positions of an image feature map.
"""
        + _ARGS_DOC
        + """
    Shape:
        ``(B, C, H, W) -> (B, C, H, W)``. Records the pairwise weights
        ``f(x_i, x_j) / C(x)`` as ``(B, HW, M)`` (M = HW, or the pooled count).

    Example:
        >>> import torch
        >>> block = NonLocal2d(64, mode="embedded_gaussian", sub_sample=True)
        >>> x = torch.randn(2, 64, 8, 9)
        >>> torch.equal(block(x), x)  # zero-initialised BN: the identity at initialisation
        True
"""
    )
    _dims = 2


@register_attn("non_local1d", kind="gate", paper=_PAPER, ndim=3)
class NonLocal1d(_NonLocalNd):
    __doc__ = (
        """Non-local block over the L positions of a sequence ``(B, C, L)``.
"""
        + _ARGS_DOC
        + """
    Shape:
        ``(B, C, L) -> (B, C, L)``. Records ``(B, L, M)``.

    Example:
        >>> import torch
        >>> block = NonLocal1d(32, mode="dot_product")
        >>> block(torch.randn(2, 32, 50)).shape
        torch.Size([2, 32, 50])
"""
    )
    _dims = 1


@register_attn("non_local3d", kind="gate", paper=_PAPER, ndim=5)
class NonLocal3d(_NonLocalNd):
    __doc__ = (
        """Non-local block over the T×H×W positions of a video feature map (the paper's setting).
"""
        + _ARGS_DOC
        + """
    Shape:
        ``(B, C, T, H, W) -> (B, C, T, H, W)``. Records ``(B, THW, M)``;
        ``sub_sample`` pools H and W only.

    Example:
        >>> import torch
        >>> block = NonLocal3d(32, mode="concatenation")
        >>> block(torch.randn(1, 32, 4, 6, 6)).shape
        torch.Size([1, 32, 4, 6, 6])
"""
    )
    _dims = 3
