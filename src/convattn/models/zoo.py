"""torchvision and timm networks of every family ``insert_attn`` places layers in, by name.

``create_model("efficientnet_b0", num_classes=10, attention="cbam", attn_where="replace")``
builds torchvision's EfficientNet-B0 (``weights=None``: nothing is downloaded) and swaps
its SE blocks for CBAM; ``attn_where="block"`` adds the layer at the family's block
placement instead (the table in ``docs/models.md``). ``timm_*`` names build timm's
network of that name (``pretrained=False``).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from .insert import maybe_insert_attn
from .registry import register_model

__all__ = ["TORCHVISION_MODELS", "TIMM_MODELS"]

TORCHVISION_MODELS = (
    "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large",
    "efficientnet_b0", "efficientnet_v2_s", "regnet_x_400mf", "regnet_y_400mf", "convnext_tiny",
    "densenet121", "shufflenet_v2_x1_0", "vgg16_bn",
)
TIMM_MODELS = (
    "seresnet50", "ecaresnet50d", "regnetx_002", "regnety_002", "efficientnet_b0", "mobilenetv3_small_100",
    "convnext_atto", "cspresnet50", "cspdarknet53",
)


def _set_in_chans(model: nn.Module, in_chans: int) -> None:
    """Replace the first convolution by one taking ``in_chans`` input channels."""
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Conv2d):
                setattr(parent, name, nn.Conv2d(
                    in_chans, child.out_channels, child.kernel_size, stride=child.stride, padding=child.padding,
                    dilation=child.dilation, groups=1, bias=child.bias is not None))
                return


def _factory(build: Callable[[int, int], nn.Module], doc: str) -> Callable[..., nn.Module]:
    def factory(
        *,
        num_classes: int,
        in_chans: int = 3,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        attn_where: Any = "block",
        attn_stages: Sequence[int | str] | None = None,
        identity_init: bool = False,
    ) -> nn.Module:
        model = build(num_classes, in_chans)
        return maybe_insert_attn(model, attention, attn_kwargs, where=attn_where, stages=attn_stages, identity_init=identity_init)

    factory.__doc__ = doc
    return factory


def _torchvision(arch: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import torchvision

        model = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
        if in_chans != 3:
            _set_in_chans(model, in_chans)
        return model

    return build


def _timm(arch: str) -> Callable[[int, int], nn.Module]:
    def build(num_classes: int, in_chans: int) -> nn.Module:
        import timm

        return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_chans)

    return build


for _arch in TORCHVISION_MODELS:
    register_model(_arch, pretrained=("torchvision", _arch))(_factory(_torchvision(_arch), f"torchvision {_arch} (weights=None) with insert_attn options."))
for _arch in TIMM_MODELS:
    register_model(f"timm_{_arch}", pretrained=("timm", _arch))(_factory(_timm(_arch), f"timm {_arch} (pretrained=False) with insert_attn options."))
