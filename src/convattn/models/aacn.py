"""``aacn``: a multi-branch attention network (feature, attention and decision branches).

The attention heads follow Attend and Rectify: a Gated Attention Mechanism for
Fine-Grained Recovery (Rodríguez, Gonfaus, Cucurull, Roca, Gonzàlez; ECCV 2018),
https://arxiv.org/abs/1807.07320: heads at several depths of a CNN compute spatial
attention distributions, pool the features with them, and their output is mixed
with the network's own output.

Branches:

- **feature branch**: a backbone from this package (``simple_cnn``, ``resnet18/34/50/101``,
  ``resnet20/32/56``) split into its stages; its last feature map is average-pooled
  into ``f``.
- **attention branch**: one ``attn_pool`` layer (K softmax heads) on the output of each
  chosen stage; the pooled vectors are stacked into one attention vector ``a``.
- **decision branch**: a linear layer over ``f`` and one over ``a``, mixed by learned
  softmax weights ``w = softmax(β)`` (``β = 0`` at start: equal weights):
  ``logits = w₀·W_f f + w₁·W_a a``.

``forward`` returns ``{"logits": (B, classes), "attention": a, "maps": {stage: (B, K, H, W)}}``
where each map is a head's distribution over positions (sums to 1).

``regularization(outputs)`` is the mean normalised entropy of the heads' spatial
distributions, ``H(p) / log N`` averaged over heads, stages and the batch: in [0, 1],
1 for uniform attention, 0 for attention on one position. Adding ``α·regularization``
to the loss encourages focused maps. ``param_groups()`` splits the parameters into
"backbone", "attention" and "decision" for staged training.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..registry import create_attn
from .positions import select_stages
from .probe import preceding_width
from .registry import create_model, register_model
from .resnet import CifarResNet
from .simple_cnn import SimpleCNN

__all__ = ["AACN", "split_backbone"]


def split_backbone(model: nn.Module) -> tuple[nn.Module, list[tuple[str, nn.Module]]]:
    """Split a backbone of this package into ``(stem, [(stage_name, stage), ...])``.

    Supports torchvision ``ResNet``, :class:`CifarResNet` and :class:`SimpleCNN`.
    """
    import torchvision

    if isinstance(model, torchvision.models.ResNet):
        stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
        return stem, [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]
    if isinstance(model, CifarResNet):
        stem = nn.Sequential(model.conv1, model.bn1, model.relu)
        return stem, [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, model.num_stages + 1)]
    if isinstance(model, SimpleCNN):
        return nn.Identity(), [(f"stage{i + 1}", s) for i, s in enumerate(model.stages)]
    raise ConfigError(
        f"aacn cannot split {type(model).__name__} into stages; use a backbone among "
        "simple_cnn, resnet18/34/50/101, resnet20/32/56"
    )


class AACN(nn.Module):
    """Feature branch + attention heads per stage + softmax-mixed decision branch.

    Args:
        backbone: a backbone :func:`split_backbone` understands (its classifier is dropped).
        num_classes: classifier outputs.
        attn_stages: 1-based stages that get attention heads (default: all).
        num_heads: heads K per stage.
        head_mode: ``"softmax"`` (distributions over positions) or ``"sigmoid"``
            (gates normalised to sum 1), passed to ``attn_pool``.

    Shape:
        ``(B, C, H, W) -> {"logits": (B, num_classes), "attention": (B, Σ K·C_s),
        "maps": {stage: (B, K, H_s, W_s)}}``.

    Example:
        >>> import torch, convattn
        >>> net = convattn.models.create_model("aacn", num_classes=10, in_chans=1)
        >>> out = net(torch.randn(2, 1, 28, 28))
        >>> out["logits"].shape, sorted(out["maps"])
        (torch.Size([2, 10]), ['stage1', 'stage2', 'stage3'])
        >>> float(net.regularization(out).detach()) <= 1.0
        True
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        num_classes: int,
        attn_stages: Sequence[int | str] | None = None,
        num_heads: int = 4,
        head_mode: str = "softmax",
    ) -> None:
        super().__init__()
        stem, stages = split_backbone(backbone)
        self._stem_names = ("conv1", "bn1") if not isinstance(backbone, SimpleCNN) else ()
        self._stage_names = [name for name, _ in stages]
        chosen = {name for name, _ in select_stages(stages, attn_stages)}
        self.stem = stem
        self.stages = nn.ModuleDict(stages)
        widths = {}
        for name, stage in stages:
            width, _ = preceding_width(stage, stage)
            if width is None:
                raise ConfigError(f"aacn cannot tell the width of stage {name!r}")
            widths[name] = width
        self.heads = nn.ModuleDict(
            {name: create_attn("attn_pool", widths[name], num_heads=num_heads, mode=head_mode) for name, _ in stages if name in chosen}
        )
        self.num_heads = num_heads
        self.num_features = widths[stages[-1][0]]
        self.attn_dim = sum(num_heads * widths[n] for n in self.heads)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc_features = nn.Linear(self.num_features, num_classes)
        self.fc_attention = nn.Linear(self.attn_dim, num_classes)
        self.mix = nn.Parameter(torch.zeros(2))

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by branch: ``"backbone"``, ``"attention"`` (the heads), ``"decision"``."""
        return {
            "backbone": [*self.stem.parameters(), *self.stages.parameters()],
            "attention": list(self.heads.parameters()),
            "decision": [*self.fc_features.parameters(), *self.fc_attention.parameters(), self.mix],
        }

    def adapt_state_dict(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """A plain backbone's state dict under this model's names (``init_from`` a plain run).

        ``simple_cnn``'s ``stages.{i}.*`` become ``stages.stage{i+1}.*``; a ResNet's
        ``conv1`` / ``bn1`` become ``stem.0`` / ``stem.1`` and ``layerN.*`` ``stages.layerN.*``;
        the backbone's classifier ``fc.*`` becomes the feature branch's ``fc_features.*``.
        A state dict of an ``aacn`` is returned unchanged.

        Example:
            >>> from convattn.models import create_model
            >>> plain = create_model("simple_cnn", num_classes=10, in_chans=1)
            >>> net = create_model("aacn", num_classes=10, in_chans=1)
            >>> state = net.adapt_state_dict(plain.state_dict())
            >>> sorted({k.split(".")[0] for k in set(net.state_dict()) - set(state)})  # new in aacn
            ['fc_attention', 'heads', 'mix']
            >>> _ = net.load_state_dict(state, strict=False)
        """
        if any(k.startswith(("fc_features.", "heads.")) for k in state):
            return dict(state)
        out = {}
        for key, value in state.items():
            head, _, rest = key.partition(".")
            if head == "fc":
                out["fc_features." + rest] = value
            elif head in self._stem_names:
                out[f"stem.{self._stem_names.index(head)}.{rest}"] = value
            elif head == "stages" and not self._stem_names:
                index, _, tail = rest.partition(".")
                name = self._stage_names[int(index)] if index.isdigit() and int(index) < len(self._stage_names) else index
                out[f"stages.{name}.{tail}"] = value
            elif head in self._stage_names:
                out[f"stages.{key}"] = value
            else:
                out[key] = value
        return out

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        x = self.stem(x)
        pooled, maps = [], {}
        for name, stage in self.stages.items():
            x = stage(x)
            if name in self.heads:
                head = self.heads[name]
                weights, _ = head.attention_weights(x)
                maps[name] = weights.reshape(x.shape[0], self.num_heads, x.shape[2], x.shape[3])
                pooled.append(head(x))
        f = torch.flatten(self.pool(x), 1)
        a = torch.cat(pooled, dim=1)
        w = self.mix.softmax(0)
        logits = w[0] * self.fc_features(f) + w[1] * self.fc_attention(a)
        return {"logits": logits, "attention": a, "maps": maps}

    @staticmethod
    def regularization(outputs: dict[str, Any]) -> torch.Tensor:
        """Mean normalised entropy ``H(p) / log N`` of the heads' spatial distributions, in [0, 1].

        Stages whose maps have a single position (``N = 1``) contribute 0.
        """
        terms = []
        for p in outputs["maps"].values():
            n = p.shape[-2] * p.shape[-1]
            flat = p.flatten(2)
            if n <= 1:
                terms.append(flat.new_zeros(()))
                continue
            ent = -(flat * flat.clamp_min(1e-12).log()).sum(-1) / math.log(n)
            terms.append(ent.mean())
        return torch.stack(terms).mean()


@register_model("aacn")
def aacn(
    *,
    num_classes: int,
    in_chans: int = 3,
    attention: str | None = None,
    attn_kwargs: dict[str, Any] | None = None,
    backbone: str = "simple_cnn",
    backbone_kwargs: dict[str, Any] | None = None,
    attn_stages: Sequence[int | str] | None = None,
    num_heads: int = 4,
    head_mode: str = "softmax",
) -> nn.Module:
    """:class:`AACN` over a registered backbone.

    Args:
        num_classes: classifier outputs.
        in_chans: input channels.
        attention: gate layer inside the backbone (its own placement), e.g. ``"se"``.
        attn_kwargs: its options.
        backbone: ``simple_cnn``, ``resnet18/34/50/101`` or ``resnet20/32/56``.
        backbone_kwargs: options of the backbone (``small_input=True`` ...).
        attn_stages: 1-based stages with attention heads (default all).
        num_heads: heads per stage.
        head_mode: ``"softmax"`` or ``"sigmoid"``.
    """
    if backbone in ("aacn", "stn_cnn", "danet_resnet50", "gated_mlp", "gated_cnn"):
        raise ConfigError(f"aacn expects a plain backbone (simple_cnn, resnet*), got {backbone!r}")
    net = create_model(
        backbone, num_classes=num_classes, in_chans=in_chans, attention=attention, attn_kwargs=attn_kwargs,
        **(backbone_kwargs or {}),
    )
    return AACN(net, num_classes=num_classes, attn_stages=attn_stages, num_heads=num_heads, head_mode=head_mode)
