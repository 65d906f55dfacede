"""Where a layer can go: ``attn_positions`` and the selection behind ``insert_attn``.

Where a layer goes is chosen per network family, following the paper that
introduced attention to that family (the table is in ``docs/models.md``):

``where="block"``
    Inside every residual / inverted-residual block, at the position its literature
    uses: the end of a ResNet branch, after its last norm and before the addition
    (SE, Hu et al., CVPR 2018; CBAM, Woo et al., ECCV 2018); after the depthwise
    convolution of MobileNet / EfficientNet blocks (MnasNet, MobileNetV3,
    EfficientNet); after the group convolution of RegNet (RegNetY) ...
``where="stage"``
    After whole stages (runs of blocks of one width): the placement of the
    non-local block (Wang et al., CVPR 2018) and of BAM (Park et al., BMVC 2018).
``where="conv"``
    After every convolution → [normalisation] → activation unit.
``where="replace"``
    In place of the attention the network already has (the SE of EfficientNet,
    MobileNetV3, RegNetY, timm's ``seresnet`` ...): the new layer takes its width
    and its place, every other weight stays.

``where`` may also be a module-path glob (``"layer3.*.bn2"``) or a callable
``fn(path, module) -> bool``; the layer goes after each selected module.
"""

from __future__ import annotations

import fnmatch
import re
from typing import Callable, NamedTuple, Sequence

from torch import nn

from ..exceptions import ConfigError
from ._families import EXISTING_ATTENTION, is_existing_attention
from ._wrappers import WithAttention
from .probe import (
    block_anchor,
    conv_runs,
    conv_summary,
    existing_attention,
    find_blocks,
    find_stages,
    is_channels_last,
    is_conv,
    pool_runs,
    preceding_width,
    resolve,
    walk,
)

__all__ = ["WHERE", "AttnPosition", "AttnPositions", "Planned", "attn_positions", "plan_positions", "select_stages"]

WHERE = ("block", "stage", "conv", "replace")

Where = str | Callable[[str, nn.Module], bool]


class AttnPosition(NamedTuple):
    """One place ``insert_attn`` would put a layer."""

    path: str
    """original module path: the layer goes after this module (or replaces it)"""
    width: int
    """channels the layer will be built for"""
    module: str
    """class name of the module at ``path``"""
    action: str
    """``"after"`` or ``"replace"``"""


class AttnPositions(list):
    """A list of :class:`AttnPosition`; ``print()`` shows it as a table."""

    def __str__(self) -> str:
        rows = [("#", "position", "width", "module", "action")]
        rows += [(str(i), p.path, str(p.width), p.module, p.action) for i, p in enumerate(self)]
        widths = [max(len(r[c]) for r in rows) for c in range(5)]
        return "\n".join("  ".join(r[c].ljust(widths[c]) for c in range(5)).rstrip() for r in rows)

    @property
    def paths(self) -> list[str]:
        return [p.path for p in self]


def attn_positions(model: nn.Module, where: Where = "block", *, stages: Sequence[int | str] | None = None
                   ) -> AttnPositions:
    """The positions :func:`insert_attn` would use, with the width of each layer; changes nothing.

    ``print(attn_positions(model, where))`` shows the plan as a table.

    Args:
        model: the network.
        where: ``"block"``, ``"stage"``, ``"conv"``, ``"replace"``, a module-path glob
            or a callable ``fn(path, module) -> bool``.
        stages: for ``"block"`` and ``"stage"``: 1-based stage numbers (stage ``i`` is
            ``layer{i}`` in a ResNet; ``-1`` the last stage; ``"res4"`` means the papers'
            res4 = ``layer3``), default all.

    Returns:
        :class:`AttnPositions`, a list of :class:`AttnPosition` ``(path, width, module,
        action)``; ``.paths`` lists the module paths.

    Raises:
        ConfigError: the network has no such positions; the message lists what the
            search found and suggests ``where=<glob>`` or a callable.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(weights=None)
        >>> attn_positions(net, "block", stages=[4]).paths
        ['layer4.0.bn2', 'layer4.1.bn2']
        >>> print(attn_positions(net, "stage", stages=["res4"]))
        #  position  width  module      action
        0  layer3    256    Sequential  after
    """
    return AttnPositions(
        AttnPosition(p.path, p.width, type(p.module).__name__, p.action) for p in plan_positions(model, where, stages)
    )


class Planned(NamedTuple):
    """A position with what building and attaching its layer needs."""

    path: str
    module: nn.Module
    action: str
    width: int
    ndim: int | None
    """rank of the features there (batch included), None where the search cannot tell"""


def plan_positions(model: nn.Module, where: Where = "block", stages: Sequence[int | str] | None = None
                   ) -> list[Planned]:
    """The positions of :func:`attn_positions` with their modules and feature ranks (``insert_attn``'s plan)."""
    plan = []
    for path, module, action in _candidates(model, where, stages):
        width, ndim = preceding_width(model, module, container=where == "stage")
        if width is None:
            raise ConfigError(
                f"insert_attn: cannot tell the channel width after {path!r} ({type(module).__name__}): "
                "no norm or convolution in or before it"
            )
        plan.append(Planned(path, module, action, width, ndim))
    return plan


def _no_positions(model: nn.Module, what: str) -> ConfigError:
    return ConfigError(
        f"insert_attn(where={what}) found no positions in {type(model).__name__}; its convolutions sit in: "
        f"{conv_summary(model)}. Name the modules to insert after with where='<glob>' (e.g. 'features.*.conv2') "
        "or a callable where=lambda path, module: ..., and check the plan with attn_positions()"
    )


def _select(n: int, names: list[str], wanted: Sequence[int | str] | None) -> list[int]:
    if wanted is None:
        return list(range(n))
    if isinstance(wanted, (int, str)):
        wanted = (wanted,)
    chosen = []
    for w in wanted:
        idx: int | None = None
        if isinstance(w, bool):
            idx = None
        elif isinstance(w, int):
            idx = w if w > 0 else n + 1 + w if w < 0 else None  # -1: the last stage
        elif isinstance(w, str) and re.fullmatch(r"(layer|stage)?\d+", w):
            idx = int(re.sub(r"\D", "", w))
        elif isinstance(w, str) and re.fullmatch(r"res\d+", w):
            idx = int(w[3:]) - 1  # the papers' res2..res5 are layer1..layer4
        if idx is None or not 1 <= idx <= n:
            raise ConfigError(
                f"insert_attn: stages expects 1-based stage numbers 1..{n}, -1 for the last (or 'layerN' / 'resN' names), "
                f"got {w!r}; the model's stages are {names}"
            )
        chosen.append(idx - 1)
    return chosen


def select_stages(stages: list[tuple[str, nn.Module]], wanted: Sequence[int | str] | None
                   ) -> list[tuple[str, nn.Module]]:
    """The ``(path, module)`` stages picked by 1-based numbers (negative from the end) / ``layerN`` / ``resN`` names."""
    return [stages[i] for i in _select(len(stages), [p for p, _ in stages], wanted)]


def _candidates(model: nn.Module, where: Where, stages: Sequence[int | str] | None) -> list[tuple[str, nn.Module, str]]:
    """``(path, module, action)`` of each position, before widths are read."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"insert_attn expects an nn.Module, got {type(model).__name__}")
    if where in ("block", "stage"):
        stage_pos, stage_blocks = find_stages(model)
        selected = None
        if stages is not None:
            if not stage_pos:
                raise ConfigError(f"insert_attn: stages={stages!r} given, but found no stages in {type(model).__name__}")
            selected = _select(len(stage_pos), [p for p, _ in stage_pos], stages)
        if where == "stage":
            if not stage_pos:
                raise _no_positions(model, "'stage'")
            return [(p, m, "after") for i, (p, m) in enumerate(stage_pos) if selected is None or i in selected]
        blocks = find_blocks(model)
        if blocks:
            if selected is not None:
                keep = {p for i in selected for p in stage_blocks[i]}
                blocks = [(p, b) for p, b in blocks if p in keep]
            out = []
            for path, block in blocks:
                anchor = block_anchor(block)
                _, _, sub = resolve(block, anchor)  # type: ignore[arg-type]
                out.append((f"{path}.{anchor}", sub.module if isinstance(sub, WithAttention) else sub, "after"))
            return out
        pools = pool_runs(model)
        if pools:  # plain CNNs (VGG): a block is the conv stack between two poolings
            return [(p, m, "after") for i, (p, m) in enumerate(pools) if selected is None or i in selected]
        raise _no_positions(model, "'block'")
    if stages is not None:
        raise ConfigError(f"insert_attn: stages applies to where='block' or 'stage', not where={where!r}")
    if where == "conv":
        found = conv_runs(model)
        convs = [p for p, m in walk(model, into_attention=False) if is_conv(m) and not is_existing_attention(m)]
        covered = len(found)  # each unit holds one convolution
        if not found or covered * 2 < len(convs):
            listed = ", ".join(p for p, _ in found[:4]) + (" ..." if len(found) > 4 else "")
            raise ConfigError(
                f"insert_attn(where='conv') found {len(found)} conv → [norm] → activation unit(s) "
                f"({listed or 'none'}) covering {covered} of the {len(convs)} convolutions in "
                f"{type(model).__name__}: the rest are pre-activation (norm → act → conv), end in a residual "
                "addition or keep their layers outside nn.Sequential. Use where='block' or 'stage', "
                "where='<glob>' or a callable"
            )
        return [(p, m, "after") for p, m in found]
    if where == "replace":
        found = existing_attention(model)
        if not found:
            raise ConfigError(
                f"insert_attn(where='replace') found no attention modules to replace in {type(model).__name__}: "
                f"it looks for {', '.join(sorted(c.rpartition('.')[2] for c in EXISTING_ATTENTION))} (torchvision / timm); "
                "use where='block' to add a layer instead"
            )
        return [(p, m, "replace") for p, m in found]
    if isinstance(where, str):
        found = [(p, m) for p, m in walk(model) if fnmatch.fnmatchcase(p, where)]
        what = f"module paths matching {where!r} (where expects {', '.join(map(repr, WHERE))}, a glob or a callable)"
    elif callable(where):
        found = [(p, m) for p, m in walk(model) if where(p, m)]
        what = "modules selected by the where callable"
    else:
        raise ConfigError(f"insert_attn expects where in {WHERE}, a glob string or a callable, got {where!r}")
    if not found:
        raise ConfigError(f"insert_attn found no {what} in {type(model).__name__}")
    for p, m in found:
        if is_channels_last(m):
            raise ConfigError(
                f"insert_attn: the output of {p!r} ({type(m).__name__}) is channels-last or flat, not "
                "(B, C, H, W); attention layers need channels-first features. Pick a convolution or a "
                "channels-first norm (see attn_positions(model, 'block'))"
            )
    # a selected module inside another selected one would be wrapped twice: keep the outermost
    paths = [p for p, _ in found]
    return [(p, m, "after") for p, m in found if not any(p.startswith(q + ".") for q in paths if q != p)]
