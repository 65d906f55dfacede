"""``danet_resnet50``: DANet for semantic segmentation on a dilated ResNet.

Dual Attention Network for Scene Segmentation (Fu, Liu, Tian, Li, Bao, Fang, Lu; CVPR 2019).
https://arxiv.org/abs/1809.02983

Backbone: torchvision ResNet-50 (``weights=None``) with the strides of ``layer3`` and
``layer4`` replaced by dilation, so features have output stride 8 (2048 channels).
Head (Sec. 3.4 and the authors' ``DANetHead``): two branches, each a 3×3 conv → BN →
ReLU reducing to C/4 channels, then the position module (``danet_pam``) or channel
module (``danet_cam``), then another 3×3 conv → BN → ReLU; the branch features are
summed. Three 1×1 classifiers (dropout 0.1 first) read the sum, the position branch
and the channel branch; each output is bilinearly upsampled to the input size.
:func:`danet_loss` sums the three cross-entropy losses, as the authors' training does.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError, ShapeError
from ..registry import create_attn
from .insert import maybe_insert_attn
from .registry import register_model
from .resnet import build_torchvision_resnet

__all__ = ["DANetHead", "DANetSeg", "danet_loss"]


def _conv_bn_relu(cin: int, cout: int, norm_layer: type[nn.Module]) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), norm_layer(cout), nn.ReLU(inplace=True))


class DANetHead(nn.Module):
    """The DANet head: position and channel attention branches and three classifiers.

    Args:
        in_channels: backbone feature width C.
        num_classes: segmentation classes.
        reduction: the branches work at ``C / reduction`` channels (paper: 4).
        pam_rd_ratio: query/key width of the position module as a fraction of its input (paper: 1/8).
        dropout: dropout before each classifier (authors' code: 0.1).
        norm_layer: normalisation of the branch convolutions.

    Shape:
        ``(B, C, h, w) -> (sum, pam, cam)``, each ``(B, num_classes, h, w)``.

    Example:
        >>> import torch
        >>> head = DANetHead(64, num_classes=5)
        >>> [t.shape[1] for t in head(torch.randn(1, 64, 5, 4))]
        [5, 5, 5]
    """

    def __init__(
        self,
        in_channels: int,
        *,
        num_classes: int,
        reduction: int = 4,
        pam_rd_ratio: float = 1 / 8,
        dropout: float = 0.1,
        norm_layer: type[nn.Module] = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if isinstance(reduction, bool) or not isinstance(reduction, int) or reduction < 1 or in_channels % reduction:
            raise ConfigError(f"DANetHead expects a reduction dividing in_channels={in_channels}, got {reduction!r}")
        inter = in_channels // reduction
        self.pam_in = _conv_bn_relu(in_channels, inter, norm_layer)
        self.pam = create_attn("danet_pam", inter, rd_ratio=pam_rd_ratio)
        self.pam_out = _conv_bn_relu(inter, inter, norm_layer)
        self.cam_in = _conv_bn_relu(in_channels, inter, norm_layer)
        self.cam = create_attn("danet_cam", inter)
        self.cam_out = _conv_bn_relu(inter, inter, norm_layer)
        self.cls_sum = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inter, num_classes, 1))
        self.cls_pam = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inter, num_classes, 1))
        self.cls_cam = nn.Sequential(nn.Dropout2d(dropout), nn.Conv2d(inter, num_classes, 1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        p = self.pam_out(self.pam(self.pam_in(x)))
        c = self.cam_out(self.cam(self.cam_in(x)))
        return self.cls_sum(p + c), self.cls_pam(p), self.cls_cam(c)


class DANetSeg(nn.Module):
    """Dilated ResNet backbone + :class:`DANetHead`; outputs upsampled to the input size.

    Args:
        backbone: a torchvision ResNet (its ``avgpool`` and ``fc`` are not used and
            are replaced by ``nn.Identity``; its other keys keep torchvision's names
            under ``backbone.``, so ImageNet weights load with ``strict=False``).
        num_classes: segmentation classes.
        **head_kwargs: options of :class:`DANetHead`.

    Shape:
        ``(B, C, H, W) -> {"out", "pam", "cam"}``, each ``(B, num_classes, H, W)``.
    """

    def __init__(self, backbone: nn.Module, *, num_classes: int, **head_kwargs: Any) -> None:
        super().__init__()
        backbone.avgpool = nn.Identity()
        backbone.fc = nn.Identity()
        self.backbone = backbone
        width = backbone.layer4[-1].conv1.in_channels
        self.head = DANetHead(width, num_classes=num_classes, **head_kwargs)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        b = self.backbone
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        size = x.shape[-2:]
        outs = self.head(self.forward_features(x))
        up = [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs]
        return {"out": up[0], "pam": up[1], "cam": up[2]}


def danet_loss(
    outputs: dict[str, torch.Tensor],
    target: torch.Tensor,
    *,
    weights: Sequence[float] = (1.0, 1.0, 1.0),
    ignore_index: int = -100,
) -> torch.Tensor:
    """Sum of the cross-entropy losses of ``out``, ``pam`` and ``cam`` (weighted by ``weights``).

    Args:
        outputs: the dict :class:`DANetSeg` returns.
        target: class indices ``(B, H, W)``.
        weights: weights of the three terms.
        ignore_index: target value to ignore (e.g. 255 for unlabelled pixels).

    Example:
        >>> import torch
        >>> out = {k: torch.zeros(1, 3, 4, 4) for k in ("out", "pam", "cam")}
        >>> round(float(danet_loss(out, torch.zeros(1, 4, 4, dtype=torch.long))), 4)  # 3 · log 3
        3.2958
    """
    if not isinstance(outputs, dict) or any(k not in outputs for k in ("out", "pam", "cam")):
        raise ShapeError("danet_loss expects the dict {'out', 'pam', 'cam'} that danet_resnet50 returns")
    if target.dim() != 3 or target.shape[0] != outputs["out"].shape[0] or target.shape[1:] != outputs["out"].shape[2:]:
        raise ShapeError(
            f"danet_loss expects target of shape (B, H, W) = {(outputs['out'].shape[0], *outputs['out'].shape[2:])}, "
            f"got {tuple(target.shape)}"
        )
    if len(weights) != 3:
        raise ConfigError(f"danet_loss expects three weights, got {weights!r}")
    return sum(
        w * F.cross_entropy(outputs[k], target, ignore_index=ignore_index) for w, k in zip(weights, ("out", "pam", "cam"))
    )


@register_model("danet_resnet50")
def danet_resnet50(
    *,
    num_classes: int,
    in_chans: int = 3,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    backbone: str = "resnet50",
    reduction: int = 4,
    pam_rd_ratio: float = 1 / 8,
    dropout: float = 0.1,
    attn_where: Any = "block",
    attn_stages: Sequence[int | str] | None = None,
    identity_init: bool = False,
) -> nn.Module:
    """:class:`DANetSeg` on a dilated torchvision ResNet (output stride 8).

    Args:
        num_classes: segmentation classes.
        in_chans: input channels.
        attention: an extra gate layer inserted into the backbone (``insert_attn``).
        attn_kwargs: its options.
        backbone: ``resnet50`` (the paper's; ``resnet101`` too), or ``resnet18``/``resnet34``
            for quick experiments (basic blocks do not support dilation in torchvision,
            so those keep output stride 32).
        reduction, pam_rd_ratio, dropout: options of :class:`DANetHead`.
        attn_where, attn_stages, identity_init: ``insert_attn`` options for ``attention``.
    """
    if backbone not in ("resnet18", "resnet34", "resnet50", "resnet101"):
        raise ConfigError(f"danet_resnet50 expects backbone in resnet18/34/50/101, got {backbone!r}")
    dilate = backbone in ("resnet50", "resnet101")
    net = build_torchvision_resnet(
        backbone,
        num_classes=1000,
        in_chans=in_chans,
        replace_stride_with_dilation=[False, True, True] if dilate else None,
    )
    net = maybe_insert_attn(net, attention, attn_kwargs, where=attn_where, stages=attn_stages, identity_init=identity_init)
    return DANetSeg(net, num_classes=num_classes, reduction=reduction, pam_rd_ratio=pam_rd_ratio, dropout=dropout)
