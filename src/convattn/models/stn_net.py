"""``stn_cnn``: the ST-CNN, a spatial transformer in front of a CNN classifier.

Spatial Transformer Networks (Jaderberg, Simonyan, Zisserman, Kavukcuoglu; NeurIPS 2015).
https://arxiv.org/abs/1506.02025

The transformer (``convattn`` layer ``stn``) warps the input image; a classifier
(``simple_cnn`` by default, or any registered model that takes ``in_chans`` and
``num_classes``) reads the warped image. The transformer starts as the identity, so
the untrained ST-CNN computes what its classifier alone computes.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import create_attn
from .registry import create_model, register_model

__all__ = ["STCNN"]


class STCNN(nn.Module):
    """Spatial transformer followed by a classifier.

    Args:
        stn: the transformer (``(B, C, H, W) -> (B, C, H', W')``), exposed as ``.stn``.
        classifier: the network reading the transformed image, exposed as ``.classifier``.

    Shape:
        ``(B, C, H, W) -> (B, num_classes)``.

    Example:
        >>> import torch, convattn
        >>> net = convattn.models.create_model("stn_cnn", num_classes=10, in_chans=1)
        >>> net(torch.randn(2, 1, 28, 28)).shape
        torch.Size([2, 10])
        >>> net.transformed(torch.randn(2, 1, 28, 28)).shape  # what the classifier sees
        torch.Size([2, 1, 28, 28])
    """

    def __init__(self, stn: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.stn = stn
        self.classifier = classifier

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"localization"``: the transformer's parameters (localisation network and
        regressor); ``"classifier"``: everything else. Used by staged training and by
        ``TrainConfig.lr_mult`` (the STN paper trains the localisation network at a
        lower learning rate)."""
        loc = list(self.stn.parameters())
        ids = {id(p) for p in loc}
        return {"localization": loc, "classifier": [p for p in self.parameters() if id(p) not in ids]}

    def transformed(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's output, the image the classifier reads."""
        return self.stn(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.stn(x))


@register_model("stn_cnn")
def stn_cnn(
    *,
    num_classes: int,
    in_chans: int = 3,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    transform: str = "affine",
    loc_channels: Sequence[int] = (16, 32),
    loc_kernel_size: int = 5,
    loc_hidden: int = 32,
    pool_size: int = 3,
    out_size: Sequence[int] | None = None,
    padding_mode: str = "zeros",
    body: str = "simple_cnn",
    body_kwargs: dict[str, Any] | None = None,
) -> nn.Module:
    """ST-CNN: ``stn`` on the input image, then the ``body`` classifier.

    Args:
        num_classes: classifier outputs.
        in_chans: image channels (the transformer's width).
        attention: attention layer inside the body (its own placement).
        attn_kwargs: its options.
        transform: ``"affine"``, ``"similarity"``, ``"attention"`` or ``"translation"``.
        loc_channels: widths of the localisation network's two strided convolutions.
        loc_kernel_size: their (odd) kernel size.
        loc_hidden: width of the localisation regressor's hidden layer.
        pool_size: side of the pooling before the regressor (any input size works).
        out_size: ``(H', W')`` of the transformed image; ``None`` keeps the input size.
        padding_mode: sampler padding: ``"zeros"`` (the paper), ``"border"``, ``"reflection"``.
        body: registered model name of the classifier.
        body_kwargs: options of the body.
    """
    if body == "stn_cnn":
        raise ConfigError("stn_cnn expects body to be another classifier, got 'stn_cnn'")
    stn = create_attn(
        "stn",
        in_chans,
        transform=transform,
        loc_channels=loc_channels,
        loc_kernel_size=loc_kernel_size,
        loc_hidden=loc_hidden,
        pool_size=pool_size,
        out_size=out_size,
        padding_mode=padding_mode,
    )
    classifier = create_model(
        body, num_classes=num_classes, in_chans=in_chans, attention=attention, attn_kwargs=attn_kwargs, **(body_kwargs or {})
    )
    return STCNN(stn, classifier)
