"""Small members of every CNN family ``insert_attn`` places layers in, for the family tests.

Each builder makes the smallest network of the family that still has its block types
(reduced widths and depths where the family's constructor allows it), so the whole
family × placement × layer matrix runs in seconds on a CPU.
"""

from __future__ import annotations

from typing import Callable

import torch
import torchvision
from torch import nn

tv = torchvision.models


def _vgg() -> nn.Module:
    from torchvision.models.vgg import VGG, make_layers

    with torch.device("meta"):  # VGG's classifier is built for 512×7×7 inputs: swap it before allocating
        net = VGG(make_layers([8, "M", 16, "M", 16, 16, "M"], batch_norm=True), num_classes=4, init_weights=False)
        net.classifier = nn.Linear(16 * 7 * 7, 4)
    net.to_empty(device="cpu")
    for m in net.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    return net


def _mnv3() -> nn.Module:
    from torchvision.models.mobilenetv3 import MobileNetV3, _mobilenet_v3_conf

    setting, last = _mobilenet_v3_conf("mobilenet_v3_small", width_mult=0.25)
    return MobileNetV3(setting, last, num_classes=4)


def _effnet() -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, _efficientnet_conf

    setting, last = _efficientnet_conf("efficientnet_b0", width_mult=0.25, depth_mult=0.25)
    return EfficientNet(setting, 0.2, last_channel=last, num_classes=4)


def _effnet_v2() -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, FusedMBConvConfig, MBConvConfig

    setting = [FusedMBConvConfig(1, 3, 1, 8, 8, 1), FusedMBConvConfig(4, 3, 2, 8, 16, 2), MBConvConfig(4, 3, 2, 16, 24, 2)]
    return EfficientNet(setting, 0.2, last_channel=64, num_classes=4)


def _regnet(se: bool) -> nn.Module:
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams.from_init_params(depth=5, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25 if se else None)
    return RegNet(params, num_classes=4)


def _convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    return ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 2)], num_classes=4)


def _timm_resnet(attn: str | None, bottleneck: bool = False) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from timm.models.resnet import BasicBlock, Bottleneck, ResNet

        return ResNet(Bottleneck if bottleneck else BasicBlock, (1, 1, 1, 1), num_classes=4,
                      block_args=dict(attn_layer=attn) if attn else None)

    return build


def _timm_regnet(se: bool) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from timm.models.regnet import RegNet, RegNetCfg

        return RegNet(RegNetCfg(depth=6, w0=8, wa=8, wm=2.0, group_size=8, se_ratio=0.25 if se else 0.0, stem_width=8),
                      num_classes=4)

    return build


def _timm_efficientnet() -> nn.Module:
    from timm.models.efficientnet import _gen_efficientnet

    return _gen_efficientnet("efficientnet_b0", channel_multiplier=0.25, depth_multiplier=0.25, num_classes=4)


def _timm_mobilenetv3() -> nn.Module:
    from timm.models.mobilenetv3 import _gen_mobilenet_v3

    return _gen_mobilenet_v3("mobilenetv3_small_050", 0.25, num_classes=4)


def _timm_convnext() -> nn.Module:
    from timm.models.convnext import ConvNeXt

    return ConvNeXt(depths=(1, 1, 1, 1), dims=(8, 16, 24, 32), num_classes=4)


def _timm_csp(stage_type: str, block_type: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from timm.models.cspnet import CspModelCfg, CspNet, CspStagesCfg, CspStemCfg

        stages = CspStagesCfg(depth=(1, 2), out_chs=(16, 32), stride=2, bottle_ratio=0.5,
                              block_ratio=1.0 if stage_type == "dark" else 0.5,
                              stage_type=stage_type, block_type=block_type)
        return CspNet(CspModelCfg(stem=CspStemCfg(out_chs=8, stride=2, kernel_size=3), stages=stages), num_classes=4)

    return build


# family -> (builder, {where: expected number of positions}); a missing where must raise ConfigError
FAMILIES: dict[str, tuple[Callable[[], nn.Module], dict[str, int]]] = {
    "tv_resnet_basic": (lambda: tv.ResNet(tv.resnet.BasicBlock, [1, 1, 1, 1], num_classes=4), {"block": 4, "stage": 4}),
    "tv_resnext_bottleneck": (lambda: tv.ResNet(tv.resnet.Bottleneck, [1, 1, 1, 1], groups=4, width_per_group=4,
                                                num_classes=4), {"block": 4, "stage": 4}),
    "tv_mobilenet_v2": (lambda: tv.mobilenet_v2(weights=None, width_mult=0.25, num_classes=4),
                        {"block": 17, "stage": 7, "conv": 35}),
    "tv_mobilenet_v3": (_mnv3, {"block": 11, "stage": 4, "conv": 23, "replace": 9}),
    "tv_efficientnet": (_effnet, {"block": 7, "stage": 7, "conv": 15, "replace": 7}),
    "tv_efficientnet_v2": (_effnet_v2, {"block": 5, "stage": 3, "conv": 9, "replace": 2}),
    "tv_regnet_x": (lambda: _regnet(False), {"block": 5, "stage": 3, "conv": 11}),
    "tv_regnet_y": (lambda: _regnet(True), {"block": 5, "stage": 3, "conv": 11, "replace": 5}),
    "tv_convnext": (_convnext, {"block": 3, "stage": 2}),
    "tv_densenet": (lambda: tv.DenseNet(growth_rate=8, block_config=(2, 2), num_init_features=16, num_classes=4),
                    {"block": 4, "stage": 2}),
    "tv_shufflenet_v2": (lambda: tv.ShuffleNetV2([2, 2, 2], [8, 16, 32, 64, 128], num_classes=4),
                         {"block": 6, "stage": 3, "conv": 17}),
    "tv_vgg_bn": (_vgg, {"block": 3, "stage": 3, "conv": 4}),
    "timm_resnet": (_timm_resnet(None), {"block": 4, "stage": 4}),
    "timm_seresnet": (_timm_resnet("se"), {"block": 4, "stage": 4, "replace": 4}),
    "timm_ecaresnet_bottleneck": (_timm_resnet("eca", bottleneck=True), {"block": 4, "stage": 4, "replace": 4}),
    "timm_regnetx": (_timm_regnet(False), {"block": 6, "stage": 4, "conv": 13}),
    "timm_regnety": (_timm_regnet(True), {"block": 6, "stage": 4, "conv": 13, "replace": 6}),
    "timm_efficientnet": (_timm_efficientnet, {"block": 7, "stage": 7, "replace": 7}),
    "timm_mobilenetv3": (_timm_mobilenetv3, {"block": 11, "stage": 5, "replace": 9}),
    "timm_convnext": (_timm_convnext, {"block": 4, "stage": 4}),
    "timm_cspnet": (_timm_csp("csp", "bottle"), {"block": 3, "stage": 2, "conv": 15}),
    "timm_darknet": (_timm_csp("dark", "dark"), {"block": 3, "stage": 2, "conv": 9}),
}
