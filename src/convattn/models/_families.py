"""Where each CNN family takes an attention layer: the block placements of ``insert_attn``.

Every entry names the block classes of one family (by their import path, so timm
stays optional), the module inside a block after which the layer goes, and the
paper whose placement that is. ``docs/models.md`` shows the same table.

A block that already has attention at that spot (the SE of EfficientNet, MobileNetV3
and RegNetY, timm's ``seresnet``) gets the new layer right after it;
``insert_attn(where="replace")`` swaps it instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn

from ._wrappers import AttentionChain, is_inserted, unwrap

__all__ = ["Family", "FAMILIES", "EXISTING_ATTENTION", "family_of", "is_existing_attention"]

# Attention modules other libraries build into their networks: what where="replace" swaps.
EXISTING_ATTENTION = {
    "torchvision.ops.misc.SqueezeExcitation",
    "timm.models._efficientnet_blocks.SqueezeExcite",
    "timm.layers.squeeze_excite.SEModule",
    "timm.layers.squeeze_excite.EffectiveSEModule",
    "timm.layers.squeeze_excite.SqueezeExcite",
    "timm.layers.eca.EcaModule",
    "timm.layers.eca.CecaModule",
    "timm.layers.cbam.CbamModule",
    "timm.layers.cbam.LightCbamModule",
    "timm.layers.gather_excite.GatherExcite",
    "timm.layers.global_context.GlobalContext",
}


def _qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def is_existing_attention(m: nn.Module) -> bool:
    """Whether ``m`` is an attention module of torchvision or timm (an SE, ECA, CBAM ...)."""
    return _qualname(m) in EXISTING_ATTENTION


@dataclass(frozen=True)
class Family:
    """One row of the placement table."""

    name: str
    classes: tuple[str, ...]
    anchor: Callable[[nn.Module], str]
    where: str
    paper: str


def _fixed(name: str) -> Callable[[nn.Module], str]:
    return lambda block: name


def _attention_or(slot: str, fallback: str) -> Callable[[nn.Module], str]:
    """``slot`` when the block has attention there, else the module feeding it."""

    def anchor(block: nn.Module) -> str:
        m = getattr(block, slot, None)
        m = unwrap(m) if isinstance(m, nn.Module) else m
        return slot if isinstance(m, nn.Module) and not isinstance(m, nn.Identity) else fallback

    return anchor


def _is_depthwise(m: nn.Module) -> bool:
    conv = unwrap(m[0]) if isinstance(m, nn.Sequential) and len(m) else m
    return isinstance(conv, nn.Conv2d) and conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels


def _seq_dw_or_se(attr: str) -> Callable[[nn.Module], str]:
    """torchvision MobileNet / EfficientNet: the SE after the depthwise unit (or the chain that
    ``where="replace"`` put in its place), else the depthwise unit."""

    def anchor(block: nn.Module) -> str:
        kids = [(n, unwrap(m)) for n, m in getattr(block, attr).named_children()]
        for i, (name, m) in enumerate(kids):
            if _is_depthwise(m):
                nxt = kids[i + 1][1] if i + 1 < len(kids) else None
                if nxt is not None and (is_existing_attention(nxt) or isinstance(nxt, AttentionChain)):
                    return f"{attr}.{kids[i + 1][0]}"
                return f"{attr}.{name}"
        return f"{attr}.{next(n for n, m in kids if not is_inserted(m))}"

    return anchor


def _regnet_tv(block: nn.Module) -> str:
    return "f.se" if "se" in block.f._modules else "f.b"


def _csp_bottleneck(block: nn.Module) -> str:
    for slot in ("attn2", "attn3"):
        if not isinstance(unwrap(getattr(block, slot)), nn.Identity):
            return slot
    return "attn2"


def _last_child(attr: str) -> Callable[[nn.Module], str]:
    return lambda block: f"{attr}.{[n for n, m in getattr(block, attr).named_children() if not is_inserted(m)][-1]}"


def _video_last_norm(block: nn.Module) -> str:
    last = "conv3" if hasattr(block, "conv3") else "conv2"
    return f"{last}.1"


_TV, _TIMM = "torchvision.models", "timm.models"
_SE_PAPER = "Hu et al., Squeeze-and-Excitation Networks (CVPR 2018), Fig. 3; CBAM, Woo et al. (ECCV 2018), Fig. 3"
_MB_PAPER = "Tan et al., MnasNet (CVPR 2019) / Howard et al., MobileNetV3 (ICCV 2019): SE after the depthwise conv"

FAMILIES: tuple[Family, ...] = (
    Family("torchvision ResNet / ResNeXt / Wide-ResNet (BasicBlock)", (f"{_TV}.resnet.BasicBlock",), _fixed("bn2"),
           "after bn2, before the residual addition", _SE_PAPER),
    Family("torchvision ResNet / ResNeXt / Wide-ResNet (Bottleneck)", (f"{_TV}.resnet.Bottleneck",), _fixed("bn3"),
           "after bn3, before the residual addition", _SE_PAPER),
    Family("torchvision video ResNet", (f"{_TV}.video.resnet.BasicBlock", f"{_TV}.video.resnet.Bottleneck"),
           _video_last_norm, "after the branch's last BatchNorm3d, before the addition", _SE_PAPER),
    Family("timm ResNet family (BasicBlock)", (f"{_TIMM}.resnet.BasicBlock",), _attention_or("se", "bn2"),
           "after bn2 (after its own se, if any), before the addition", _SE_PAPER),
    Family("timm ResNet family (Bottleneck)", (f"{_TIMM}.resnet.Bottleneck",), _attention_or("se", "bn3"),
           "after bn3 (after its own se, if any), before the addition", _SE_PAPER),
    Family("torchvision MobileNetV2", (f"{_TV}.mobilenetv2.InvertedResidual",), _seq_dw_or_se("conv"),
           "after the depthwise conv-BN-ReLU6 unit, before the projection",
           "Hou et al., Coordinate Attention (CVPR 2021), Fig. 4; MnasNet"),
    Family("torchvision MobileNetV3", (f"{_TV}.mobilenetv3.InvertedResidual",), _seq_dw_or_se("block"),
           "after the depthwise unit (after its SE, where the block has one)", _MB_PAPER),
    Family("torchvision EfficientNet (MBConv)", (f"{_TV}.efficientnet.MBConv",), _seq_dw_or_se("block"),
           "after the depthwise unit and its SE, before the projection",
           "Tan & Le, EfficientNet (ICML 2019), MBConv with SE"),
    Family("torchvision EfficientNetV2 (FusedMBConv)", (f"{_TV}.efficientnet.FusedMBConv",), _fixed("block.0"),
           "after the fused 3×3 expansion conv, before the 1×1 projection",
           "Tan & Le, EfficientNetV2 (ICML 2021), Fig. 2 (Fused-MBConv: conv3×3, SE, conv1×1)"),
    Family("torchvision RegNet", (f"{_TV}.regnet.ResBottleneckBlock",), _regnet_tv,
           "after the 3×3 group conv b (after RegNetY's SE), before the 1×1 conv c",
           "Radosavovic et al., Designing Network Design Spaces (CVPR 2020), RegNetY"),
    Family("torchvision ConvNeXt", (f"{_TV}.convnext.CNBlock",), _fixed("block.0"),
           "after the 7×7 depthwise conv (the block's channels-first spatial step)",
           "Liu et al., A ConvNet for the 2020s (CVPR 2022) inverted bottleneck; SE slot of MnasNet"),
    Family("torchvision DenseNet", (f"{_TV}.densenet._DenseLayer",), _fixed("conv2"),
           "after each dense layer's 3×3 conv: its new features, before concatenation",
           "Huang et al., DenseNet (CVPR 2017) with SE's recalibration of a block's output (Hu et al. 2018)"),
    Family("torchvision ShuffleNetV2", (f"{_TV}.shufflenetv2.InvertedResidual",), _last_child("branch2"),
           "at the end of the main branch (branch2), before concatenation and shuffle",
           "Ma et al., ShuffleNet V2 (ECCV 2018), SE variant (ShuffleNetV2+ / SE-ShuffleNet v2)"),
    Family("timm EfficientNet / MobileNet / MixNet (_efficientnet_blocks)",
           tuple(f"{_TIMM}._efficientnet_blocks.{c}" for c in ("DepthwiseSeparableConv", "InvertedResidual",
                                                              "EdgeResidual", "CondConvResidual",
                                                              "UniversalInvertedResidual")),
           _fixed("se"), "at the block's se slot: after the depthwise (or fused) conv and its SE", _MB_PAPER),
    Family("timm RegNet", (f"{_TIMM}.regnet.Bottleneck", f"{_TIMM}.regnet.PreBottleneck"), _fixed("se"),
           "at the se slot after the 3×3 group conv (RegNetY's SE position)",
           "Radosavovic et al. (CVPR 2020), RegNetY"),
    Family("timm ConvNeXt", (f"{_TIMM}.convnext.ConvNeXtBlock",), _fixed("conv_dw"),
           "after the 7×7 depthwise conv", "Liu et al. (CVPR 2022); SE slot of MnasNet"),
    Family("timm CSPNet / CSPDarkNet (BottleneckBlock)", (f"{_TIMM}.cspnet.BottleneckBlock",), _csp_bottleneck,
           "at the attn2 slot after the 3×3 conv (attn3 where the model uses that one)",
           "Wang et al., CSPNet (CVPRW 2020); timm's attn_layer slot (SE/ECA/CBAM variants)"),
    Family("timm DarkNet / CSPDarkNet (DarkBlock, EdgeBlock)", (f"{_TIMM}.cspnet.DarkBlock", f"{_TIMM}.cspnet.EdgeBlock"),
           _fixed("attn"), "at the attn slot between the 1×1 and the 3×3 conv",
           "Redmon & Farhadi, YOLOv3 (2018) DarkNet-53; timm's attn_layer slot"),
)

_BY_CLASS = {c: f for f in FAMILIES for c in f.classes}


def family_of(block: nn.Module) -> Family | None:
    """The family whose block ``block`` is, or None."""
    for cls in type(block).__mro__:
        fam = _BY_CLASS.get(f"{cls.__module__}.{cls.__qualname__}")
        if fam is not None:
            return fam
    return None
