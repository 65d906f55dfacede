"""``gated_mlp`` / ``gated_cnn``: small classifiers for 28×28 images with a gated attention head.

A linear classifier reads the features ``f`` of a small MLP or CNN, and a gated
attention head rectifies its output, as in Attend and Rectify (Rodríguez et al., ECCV
2018, https://arxiv.org/abs/1807.07320), where the attention outputs "update and
rectify the output likelihood distribution" of the network they are added to:
``logits = fc(f) + head(f)``. ``GatedAttentionHead`` (``convattn.layers.attn_pool``)
has K heads that each gate the feature vector, ``y_k = f ⊙ σ(W_k f + b_k)``,
concatenated, dropped out and projected to the class scores by a linear layer that starts
at zero, so training starts from the plain classifier and the heads learn a correction.
(With the head alone in front of the classifier, the models trained far slower than
the same backbone with a linear classifier: 26 % against 76 % test accuracy on
cluttered digits after 6 epochs.)
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..layers.modes import is_symbolic
from ..layers.attn_pool import GatedAttentionHead
from .registry import register_model
from .simple_cnn import ConvBlock, make_attention

__all__ = ["GatedMLP", "GatedCNN"]


def _check_sizes(owner: str, name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in values):
        raise ConfigError(f"{owner} expects {name} to be positive ints, got {values!r}")
    return values


def _rectifying_head(features: int, num_classes: int, num_heads: int, dropout: float) -> GatedAttentionHead:
    """The gated head projecting straight to class scores, its projection zero at the start."""
    head = GatedAttentionHead(features, out_features=num_classes, num_heads=num_heads, dropout=dropout)
    nn.init.zeros_(head.proj.weight)
    nn.init.zeros_(head.proj.bias)
    return head


class GatedMLP(nn.Module):
    """MLP → linear classifier, rectified by a :class:`GatedAttentionHead` on the same features.

    Args:
        num_classes: classifier outputs.
        in_chans: image channels.
        image_size: ``(H, W)`` of the inputs (the first linear layer's width depends on it).
        hidden: widths of the MLP's hidden layers.
        num_heads: gate heads K.
        dropout: dropout inside the head.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``.

    Example:
        >>> import torch
        >>> GatedMLP(num_classes=10, in_chans=1)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        image_size: Sequence[int] = (28, 28),
        hidden: Sequence[int] = (256, 128),
        num_heads: int = 4,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.image_size = _check_sizes("GatedMLP", "image_size", image_size)
        if len(self.image_size) != 2:
            raise ConfigError(f"GatedMLP expects image_size (H, W), got {image_size!r}")
        hidden = _check_sizes("GatedMLP", "hidden", hidden)
        self.in_chans = in_chans
        layers: list[nn.Module] = [nn.Flatten(1)]
        prev = in_chans * self.image_size[0] * self.image_size[1]
        for h in hidden:
            layers += [nn.Linear(prev, h), nn.ReLU(inplace=True)]
            prev = h
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(prev, num_classes)
        self.head = _rectifying_head(prev, num_classes, num_heads, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not is_symbolic(x) and tuple(x.shape[1:]) != (self.in_chans, *self.image_size):
            from ..exceptions import ShapeError

            raise ShapeError(
                f"GatedMLP expects input of shape (B, {self.in_chans}, {self.image_size[0]}, {self.image_size[1]}), "
                f"got {tuple(x.shape)}"
            )
        f = self.features(x)
        return self.fc(f) + self.head(f)


class GatedCNN(nn.Module):
    """Conv blocks → global average pooling → linear classifier, rectified by a :class:`GatedAttentionHead`.

    Args:
        num_classes: classifier outputs.
        in_chans: image channels.
        widths: filters of the conv → BN → ReLU → [attention] → max-pool blocks.
        num_heads: gate heads K.
        dropout: dropout inside the head.
        attention: optional gate layer after each conv block.
        attn_kwargs: its options.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``, any ``H, W``.

    Example:
        >>> import torch
        >>> GatedCNN(num_classes=10, in_chans=1)(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        widths: Sequence[int] = (32, 64),
        num_heads: int = 4,
        dropout: float = 0.2,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        widths = _check_sizes("GatedCNN", "widths", widths)
        blocks, prev = [], in_chans
        for w in widths:
            blocks.append(ConvBlock(prev, w, attn=make_attention(attention, w, attn_kwargs)))
            prev = w
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(prev, num_classes)
        self.head = _rectifying_head(prev, num_classes, num_heads, dropout)
        for m in self.stages.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.flatten(self.pool(self.stages(x)), 1)
        return self.fc(f) + self.head(f)


@register_model("gated_mlp")
def gated_mlp(
    *,
    num_classes: int,
    in_chans: int = 1,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    image_size: Sequence[int] = (28, 28),
    hidden: Sequence[int] = (256, 128),
    num_heads: int = 4,
    dropout: float = 0.2,
) -> nn.Module:
    """:class:`GatedMLP`; it has no feature maps, so ``attention`` must be ``None``."""
    if attention is not None:
        raise ConfigError(f"gated_mlp has no feature maps to put {attention!r} on; use gated_cnn")
    return GatedMLP(
        num_classes=num_classes, in_chans=in_chans, image_size=image_size, hidden=hidden,
        num_heads=num_heads, dropout=dropout,
    )


@register_model("gated_cnn")
def gated_cnn(
    *,
    num_classes: int,
    in_chans: int = 1,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    widths: Sequence[int] = (32, 64),
    num_heads: int = 4,
    dropout: float = 0.2,
) -> nn.Module:
    """:class:`GatedCNN` with an optional gate layer after each conv block."""
    return GatedCNN(
        num_classes=num_classes, in_chans=in_chans, widths=widths, num_heads=num_heads,
        dropout=dropout, attention=attention, attn_kwargs=attn_kwargs,
    )
