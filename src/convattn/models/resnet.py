"""ResNets with attention: torchvision's ImageNet ResNets and the CIFAR ResNets of He et al.

Deep Residual Learning for Image Recognition, He, Zhang, Ren, Sun; CVPR 2016.
https://arxiv.org/abs/1512.03385

``resnet18/34/50/101`` are torchvision's networks (built with ``weights=None``, so
nothing is downloaded); ``resnet20/32/56`` are the 6n+2-layer CIFAR networks of
Sec. 4.2 of the paper, built from torchvision's ``BasicBlock``. With ``attention``
set, the layer goes at the end of every residual branch (``insert_attn(where="block")``),
the placement of SE-ResNet and CBAM-ResNet.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock

from ..exceptions import ConfigError
from .insert import maybe_insert_attn
from .registry import register_model

__all__ = ["CifarResNet", "PadShortcut", "build_torchvision_resnet"]


def build_torchvision_resnet(
    arch: str,
    *,
    num_classes: int,
    in_chans: int = 3,
    small_input: bool = False,
    **tv_kwargs: Any,
) -> torchvision.models.ResNet:
    """A torchvision ResNet (``weights=None``) with its stem adapted to ``in_chans`` / small inputs.

    ``small_input=True`` uses a 3×3 stride-1 first convolution and no max-pool (the
    usual change for 32×32 inputs), keeping every other layer.
    """
    model = getattr(torchvision.models, arch)(weights=None, num_classes=num_classes, **tv_kwargs)
    if small_input:
        model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_chans != 3:
        model.conv1 = nn.Conv2d(in_chans, model.conv1.out_channels, 7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    return model


def _make_tv(arch: str):
    def factory(
        *,
        num_classes: int,
        in_chans: int = 3,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        small_input: bool = False,
        attn_where: Any = "block",
        attn_stages: Sequence[int | str] | None = None,
        identity_init: bool = False,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
        replace_stride_with_dilation: list[bool] | None = None,
    ) -> nn.Module:
        model = build_torchvision_resnet(
            arch,
            num_classes=num_classes,
            in_chans=in_chans,
            small_input=small_input,
            zero_init_residual=zero_init_residual,
            groups=groups,
            width_per_group=width_per_group,
            replace_stride_with_dilation=replace_stride_with_dilation,
        )
        return maybe_insert_attn(model, attention, attn_kwargs, where=attn_where, stages=attn_stages, identity_init=identity_init)

    factory.__name__ = arch
    factory.__doc__ = f"""torchvision ``{arch}`` (no pretrained weights) with optional attention in every block.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        attention: layer inserted with ``insert_attn`` (``None``: the plain network).
        attn_kwargs: options of that layer.
        small_input: 3×3 stride-1 stem without max-pool, for 32×32 inputs.
        attn_where: ``where`` of ``insert_attn`` (default ``"block"``: SE/CBAM placement).
        attn_stages: ``stages`` of ``insert_attn`` (1-based, default all).
        identity_init: wrap each inserted layer so it starts as the identity.
        zero_init_residual, groups, width_per_group, replace_stride_with_dilation:
            passed to torchvision's ``ResNet``.
    """
    return factory


for _arch in ("resnet18", "resnet34", "resnet50", "resnet101"):
    register_model(_arch, pretrained=("torchvision", _arch))(_make_tv(_arch))


class PadShortcut(nn.Module):
    """Parameter-free shortcut ("option A" of He et al.): subsample, then zero-pad channels.

    Shape:
        ``(B, C_in, H, W) -> (B, C_out, ceil(H / stride), ceil(W / stride))``.

    Example:
        >>> import torch
        >>> PadShortcut(16, 32, stride=2)(torch.randn(1, 16, 7, 8)).shape
        torch.Size([1, 32, 4, 4])
    """

    def __init__(self, in_channels: int, out_channels: int, *, stride: int = 2) -> None:
        super().__init__()
        if out_channels < in_channels:
            raise ConfigError(f"PadShortcut expects out_channels >= in_channels, got {out_channels} < {in_channels}")
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - self.in_channels
        return F.pad(x, (0, 0, 0, 0, extra // 2, extra - extra // 2))


class CifarResNet(nn.Module):
    """The 6n+2-layer CIFAR ResNet of He et al. (2016, Sec. 4.2).

    A 3×3 convolution with 16 filters, three stages of ``n`` basic blocks with 16,
    32 and 64 filters (the first block of stages 2 and 3 has stride 2), global
    average pooling and a linear classifier. ``shortcut="A"`` (the paper's CIFAR
    choice) subsamples and zero-pads on the shortcut, so it adds no parameters
    (ResNet-20: 0.27 M); ``shortcut="B"`` uses a 1×1 convolution + BN projection.

    Args:
        depth: 6n + 2 (20, 32, 44, 56, 110).
        num_classes: classifier outputs.
        in_chans: input channels.
        shortcut: ``"A"`` or ``"B"``.
        widths: filters per stage.

    Shape:
        ``(B, in_chans, H, W) -> (B, num_classes)``.

    Example:
        >>> import torch
        >>> CifarResNet(20, num_classes=10)(torch.randn(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        depth: int = 20,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        shortcut: str = "A",
        widths: Sequence[int] = (16, 32, 64),
    ) -> None:
        super().__init__()
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CifarResNet expects depth = 6n + 2 (20, 32, 44, 56, 110), got {depth!r}")
        if shortcut not in ("A", "B"):
            raise ConfigError(f"CifarResNet expects shortcut in ['A', 'B'], got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth, self.shortcut = depth, shortcut
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        inplanes = widths[0]
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                down = None
                if stride != 1 or inplanes != width:
                    if shortcut == "A":
                        down = PadShortcut(inplanes, width, stride=stride)
                    else:
                        down = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False), nn.BatchNorm2d(width))
                blocks.append(BasicBlock(inplanes, width, stride=stride, downsample=down))
                inplanes = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
        self.num_stages = len(widths)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(inplanes, num_classes)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.fc.reset_parameters()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def _make_cifar(depth: int):
    def factory(
        *,
        num_classes: int,
        in_chans: int = 3,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        shortcut: str = "A",
        attn_where: Any = "block",
        attn_stages: Sequence[int | str] | None = None,
        identity_init: bool = False,
    ) -> nn.Module:
        model = CifarResNet(depth, num_classes=num_classes, in_chans=in_chans, shortcut=shortcut)
        return maybe_insert_attn(model, attention, attn_kwargs, where=attn_where, stages=attn_stages, identity_init=identity_init)

    factory.__name__ = f"resnet{depth}"
    factory.__doc__ = f"""CIFAR ResNet-{depth} (He et al. 2016, Sec. 4.2), optional attention in every block.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        attention: layer inserted with ``insert_attn``.
        attn_kwargs: its options.
        shortcut: ``"A"`` (zero-padding identity, the paper's CIFAR choice) or ``"B"`` (projection).
        attn_where, attn_stages, identity_init: ``where``, ``stages``, ``identity_init`` of ``insert_attn``.
    """
    return factory


for _depth in (20, 32, 56):
    register_model(f"resnet{_depth}")(_make_cifar(_depth))
