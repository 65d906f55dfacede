"""AA-ResNets: ResNets whose 3×3 convolutions are attention-augmented convolutions.

Attention Augmented Convolutional Networks (Bello, Zoph, Vaswani, Shlens, Le; ICCV 2019).
https://arxiv.org/abs/1904.09925

Every 3×3 convolution of the residual blocks in the chosen stages (default
``layer3`` and ``layer4``, where the feature maps are small enough for attention over
all positions to be affordable) is replaced by the ``aa_conv`` layer with the same
input/output width and stride: ``Concat[Conv(X), MHA(X)]``, with the paper's
ResNet setting κ = 2υ = 0.2 (``dk = 0.2·F_out``, ``dv = 0.1·F_out``) and 8 heads.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from ..exceptions import ConfigError
from ..registry import create_attn
from .insert import maybe_insert_attn
from .positions import select_stages
from .registry import register_model
from .resnet import build_torchvision_resnet

__all__ = ["augment_convs"]


def augment_convs(
    model: nn.Module,
    *,
    stages: Sequence[int | str] = (3, 4),
    dk: int | float = 0.2,
    dv: int | float = 0.1,
    num_heads: int = 8,
    rel_pos: bool = True,
    max_size: int = 64,
) -> list[str]:
    """Replace the 3×3 convolutions of the residual blocks in ``stages`` by ``aa_conv`` (in place).

    Args:
        model: a ResNet with ``layer1``... stages.
        stages: 1-based stage numbers (``3`` is ``layer3``).
        dk, dv, num_heads, rel_pos, max_size: options of ``aa_conv``.

    Returns:
        the paths of the replaced convolutions.
    """
    all_stages = [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5) if hasattr(model, f"layer{i}")]
    replaced = []
    for stage_path, stage in select_stages(all_stages, stages):
        for path, module in list(stage.named_modules()):
            for name, conv in list(module.named_children()):
                if not (isinstance(conv, nn.Conv2d) and conv.kernel_size == (3, 3)):
                    continue
                if conv.groups != 1 or conv.dilation != (1, 1) or conv.stride[0] != conv.stride[1]:
                    raise ConfigError(
                        f"aa_resnet: cannot augment {stage_path}.{path}.{name}: aa_conv needs groups=1, "
                        f"dilation 1 and a square stride, got groups={conv.groups}, dilation={conv.dilation}, "
                        f"stride={conv.stride}"
                    )
                aa = create_attn(
                    "aa_conv",
                    conv.in_channels,
                    out_channels=conv.out_channels,
                    kernel_size=3,
                    stride=conv.stride[0],
                    dk=dk,
                    dv=dv,
                    num_heads=num_heads,
                    rel_pos=rel_pos,
                    max_size=max_size,
                    bias=conv.bias is not None,
                )
                setattr(module, name, aa)
                replaced.append(".".join(p for p in (stage_path, path, name) if p))
    return replaced


def _make_aa(arch: str):
    def factory(
        *,
        num_classes: int,
        in_chans: int = 3,
        attention: str | None = None,
        attn_kwargs: dict[str, Any] | None = None,
        small_input: bool = False,
        aa_stages: Sequence[int | str] = (3, 4),
        dk: int | float = 0.2,
        dv: int | float = 0.1,
        num_heads: int = 8,
        rel_pos: bool = True,
        max_size: int = 64,
        attn_where: Any = "block",
        attn_stages: Sequence[int | str] | None = None,
        identity_init: bool = False,
    ) -> nn.Module:
        model = build_torchvision_resnet(arch, num_classes=num_classes, in_chans=in_chans, small_input=small_input)
        augment_convs(model, stages=aa_stages, dk=dk, dv=dv, num_heads=num_heads, rel_pos=rel_pos, max_size=max_size)
        return maybe_insert_attn(model, attention, attn_kwargs, where=attn_where, stages=attn_stages, identity_init=identity_init)

    factory.__name__ = f"aa_{arch}"
    factory.__doc__ = f"""AA-{arch}: torchvision ``{arch}`` with ``aa_conv`` for the 3×3 convolutions of ``aa_stages``.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        attention: an additional gate layer inserted per block (``insert_attn``).
        attn_kwargs: its options.
        small_input: 3×3 stride-1 stem without max-pool, for 32×32 inputs.
        aa_stages: 1-based stages whose 3×3 convolutions are augmented.
        dk, dv: key / value depth, an int or the fraction κ / υ of the output width (paper: 0.2 / 0.1).
        num_heads: attention heads (paper: 8).
        rel_pos: 2-D relative position logits (paper: on).
        max_size: largest H or W with its own relative embedding.
        attn_where, attn_stages, identity_init: ``insert_attn`` options for ``attention``.
    """
    return factory


for _arch in ("resnet18", "resnet50"):
    register_model(f"aa_{_arch}")(_make_aa(_arch))
