"""``insert_attn``: put attention layers into an existing CNN, keeping its weights loadable.

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

Insertion only *adds* modules; no existing module changes its class. After a module
``m`` the layer is attached as follows:

- ``m`` is a plain ``nn.Sequential`` (a stage), or the last child of one: the layer
  is appended to that ``nn.Sequential`` (``layer3.6`` after a six-block ``layer3``),
  so no existing key changes;
- otherwise ``m`` is replaced by a :class:`WithAttention` holding ``m`` as ``.module``
  and the new layers in ``.attn`` (``bn2.module.weight``, ``bn2.attn.0.*``). It maps
  the original keys (``bn2.weight``) onto the wrapped module when a state dict is
  loaded, so the original network's weights load with only the new keys missing.

Because the attention is an ordinary child module on the forward path,
``SyncBatchNorm.convert_sync_batchnorm``, BN-freezing and fusion utilities that
rebuild modules, ``copy.deepcopy``, pickling, ``torch.fx`` and torchvision's
``create_feature_extractor`` all keep it.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, NamedTuple, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..layers._recording import RecordsAttention
from ..registry import _REGISTRY, create_attn, get_attn_info
from ._families import EXISTING_ATTENTION, family_of, is_existing_attention
from ._wrappers import AttentionChain, IdentityBlend, WithAttention, is_inserted

__all__ = [
    "insert_attn",
    "attn_positions",
    "AttnPosition",
    "AttentionChain",
    "IdentityBlend",
    "WithAttention",
    "WHERE",
]

WHERE = ("block", "stage", "conv", "replace")

Where = str | Callable[[str, nn.Module], bool]


# --------------------------------------------------------------------------- wrappers


# --------------------------------------------------------------------------- model inspection

_NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_CONV_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd,)
_POOL_TYPES: tuple[type, ...] = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d)
_ACT_TYPES: tuple[type, ...] = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
    nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.Hardtanh,
)
_SKIP_CHILDREN = {"downsample", "shortcut", "skip", "proj", "se", "attn", "drop_path"}
_BLOCK_NAME = re.compile(r"block|bottleneck|basic", re.IGNORECASE)
_RESIDUAL_HINT = re.compile(r"\+=|\+\s*\w*(identity|shortcut|residual|skip|downsample|x\b)|(identity|shortcut|residual|skip)\w*\s*\+")


def _is_norm(m: nn.Module) -> bool:
    if isinstance(m, _NORM_TYPES):
        return True
    # torchvision's FrozenBatchNorm2d, timm's BatchNormAct2d/FrozenBatchNorm2d and friends
    name = type(m).__name__.lower()
    return "norm" in name and not isinstance(m, (AttentionChain, RecordsAttention, WithAttention)) and _width_of(m) is not None


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, _CONV_TYPES)


def _is_act(m: nn.Module) -> bool:
    return isinstance(m, _ACT_TYPES) or type(m).__name__ in {"Swish", "HardSwish", "QuickGELU", "StarReLU"}


def _is_attention(m: nn.Module) -> bool:
    """A layer ``insert_attn`` put in (or a convattn layer): never searched for positions."""
    return is_inserted(m)


def _is_channels_last(m: nn.Module) -> bool:
    """Modules whose output is not channels-first ``(B, C, ...)``: linear layers, plain LayerNorm."""
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.LayerNorm) and "2d" not in type(m).__name__.lower()


def _width_of(m: nn.Module) -> int | None:
    """Channel width of a module's output, for norms and convolutions; None if unknown."""
    if _is_conv(m):
        return int(m.out_channels)
    for attr in ("num_features", "num_channels"):
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    w = getattr(m, "weight", None)
    if isinstance(w, torch.Tensor) and w.dim() == 1:
        return int(w.shape[0])
    return None


def _ndim_of(m: nn.Module) -> int | None:
    """Input rank (batch included) a norm or conv works on: 3, 4 or 5; None if unknown."""
    for cls, nd in ((nn.Conv1d, 3), (nn.Conv2d, 4), (nn.Conv3d, 5), (nn.ConvTranspose1d, 3),
                    (nn.ConvTranspose2d, 4), (nn.ConvTranspose3d, 5), (nn.BatchNorm1d, 3),
                    (nn.BatchNorm2d, 4), (nn.BatchNorm3d, 5), (nn.InstanceNorm1d, 3),
                    (nn.InstanceNorm2d, 4), (nn.InstanceNorm3d, 5)):
        if isinstance(m, cls):
            return nd
    name = type(m).__name__
    for tag, nd in (("1d", 3), ("2d", 4), ("3d", 5)):
        if tag in name.lower():
            return nd
    return None


def _children(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """Named children, a :class:`WithAttention` standing for the module it wraps; inserted layers skipped."""
    for name, child in module.named_children():
        if _is_attention(child):
            continue
        yield name, child.module if isinstance(child, WithAttention) else child


def _walk(module: nn.Module, prefix: str = "", skip_names: Iterable[str] = (), into_attention: bool = True
          ) -> Iterator[tuple[str, nn.Module]]:
    """Descendants by their original paths, in registration order, not entering inserted layers."""
    skip = set(skip_names)
    for name, child in _children(module):
        if name in skip:
            continue
        path = f"{prefix}.{name}" if prefix else name
        yield path, child
        if into_attention or not is_existing_attention(child):
            yield from _walk(child, path, into_attention=into_attention)


def _resolve(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
    """``(parent, name, current)`` for an original module path; ``current`` may be a WithAttention."""
    parent, current = model, model
    name = ""
    for part in path.split("."):
        if isinstance(current, WithAttention):
            current = current.module
        parent, name = current, part
        current = getattr(current, part)
    return parent, name, current


def _block_last_norm(block: nn.Module) -> tuple[str, nn.Module] | None:
    norms = [(p, m) for p, m in _walk(block, skip_names=_SKIP_CHILDREN) if _is_norm(m)]
    return norms[-1] if norms else None


def _has_residual(cls: type) -> bool:
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return bool(_RESIDUAL_HINT.search(src))


def _is_generic_block(m: nn.Module) -> bool:
    if isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)) or not _BLOCK_NAME.search(type(m).__name__):
        return False
    convs = [c for _, c in _walk(m, skip_names=_SKIP_CHILDREN) if _is_conv(c)]
    return len(convs) >= 2 and _block_last_norm(m) is not None and _has_residual(type(m))


def _block_anchor(block: nn.Module) -> str | None:
    """Path inside ``block`` after which its layer goes (the family's placement)."""
    fam = family_of(block)
    if fam is not None:
        return fam.anchor(block)
    if _is_generic_block(block):
        return _block_last_norm(block)[0]  # type: ignore[index]
    return None


def _find_blocks(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    found = []
    for name, child in _children(model):
        path = f"{prefix}.{name}" if prefix else name
        if is_existing_attention(child):
            continue
        if _block_anchor(child) is not None:
            found.append((path, child))
        else:
            found += _find_blocks(child, path)
    return found


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and not isinstance(
        m, AttentionChain
    )


def _parent_path(path: str) -> str:
    return path.rpartition(".")[0]


def _stage_runs(model: nn.Module, blocks: list[tuple[str, nn.Module]]) -> list[list[tuple[str, nn.Module]]]:
    """Blocks grouped into stages: a new stage starts at a new parent, a new width or a downsampling block."""
    runs: list[list[tuple[str, nn.Module]]] = []
    last_key = None
    for path, block in blocks:
        inner = [m for _, m in _walk(block, into_attention=False) if _is_norm(m) or _is_conv(m)]
        main = [m for _, m in _walk(block, skip_names={"downsample", "shortcut", "proj", "branch1"}, into_attention=False)
                if _is_norm(m) or _is_conv(m)]
        strided = any(_is_conv(m) and max(m.stride) > 1 for m in inner)
        key = (_parent_path(path), _width_of(main[-1]) if main else None)
        if runs and key == last_key and not strided:
            runs[-1].append((path, block))
        else:
            runs.append([(path, block)])
        last_key = key
    return runs


def _stage_position(model: nn.Module, run: list[tuple[str, nn.Module]], all_blocks: list[str]) -> tuple[str, nn.Module]:
    """The module after which a stage's layer goes: the stage container when the run fills it."""
    parent_path = _parent_path(run[0][0])
    siblings = [p for p in all_blocks if _parent_path(p) == parent_path]
    last_path, last = run[-1]
    if parent_path and len(siblings) == len(run):
        _, _, parent = _resolve(model, parent_path)
        parent = parent.module if isinstance(parent, WithAttention) else parent
        kids = [n for n, _ in _children(parent)]
        if not _is_plain_sequential(parent) or kids[-1] == last_path.rpartition(".")[2]:
            stage_path = _parent_path(parent_path)
            if stage_path and type(_resolve(model, stage_path)[2]).__name__.startswith("CrossStage"):
                # a CSP stage merges its blocks' output with the cross branch after them
                _, _, stage = _resolve(model, stage_path)
                return stage_path, stage.module if isinstance(stage, WithAttention) else stage
            return parent_path, parent
    return last_path, last


def _container_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``layer1, layer2, ...``, a ``stages`` container or ``s1, s2, ...``: stages of networks without known blocks."""
    for path, m in [("", model)] + list(_walk(model)):
        for pattern in ("layer{}", "s{}"):
            found, i = [], 1
            while isinstance(getattr(m, pattern.format(i), None), nn.Module):
                name = pattern.format(i)
                found.append((f"{path}.{name}" if path else name, getattr(m, name)))
                i += 1
            if found:
                return found
        stages = getattr(m, "stages", None)
        if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) > 0:
            base = f"{path}.stages" if path else "stages"
            return [(f"{base}.{n}", s) for n, s in _children(stages)]
    return []


def _pool_runs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Activations closing the last conv run before each pooling layer (VGG's blocks)."""
    found = []
    for path, seq in [("", model)] + list(_walk(model)):
        if not isinstance(seq, nn.Sequential):
            continue
        kids = list(_children(seq))
        runs = _runs_in(kids)
        for i, (name, act) in runs:
            if i + 1 < len(kids) and isinstance(kids[i + 1][1], _POOL_TYPES):
                found.append((f"{path}.{name}" if path else name, act))
    return found


def _runs_in(kids: list[tuple[str, nn.Module]]) -> list[tuple[int, tuple[str, nn.Module]]]:
    runs = []
    for i, (_, m) in enumerate(kids):
        if not _is_conv(m):
            continue
        j = i + 1
        if j < len(kids) and _is_norm(kids[j][1]):
            j += 1
        if j < len(kids) and _is_act(kids[j][1]):
            runs.append((j, kids[j]))
    return runs


def _is_conv_norm_act(m: nn.Module) -> bool:
    """timm's ConvNormAct: a ``conv`` and a ``bn`` that applies a (non-identity) activation."""
    if isinstance(m, nn.Sequential):
        return False
    conv, bn = m._modules.get("conv"), m._modules.get("bn")
    act = bn._modules.get("act") if bn is not None else None
    return conv is not None and _is_conv(conv) and act is not None and not isinstance(act, nn.Identity)


def _conv_runs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """conv → [norm] → activation units: runs inside an nn.Sequential, and timm ConvNormAct modules."""
    found = []
    for path, m in [("", model)] + list(_walk(model, into_attention=False)):
        if is_existing_attention(m):
            continue
        if isinstance(m, nn.Sequential):
            for _, (name, act) in _runs_in(list(_children(m))):
                found.append((f"{path}.{name}" if path else name, act))
        elif _is_conv_norm_act(m):
            found.append((path, m))
    # a ConvNormAct's own children never form a second run, and no module is counted twice
    seen, out = set(), []
    for p, m in found:
        if p not in seen and not any(p.startswith(q + ".") for q in seen):
            seen.add(p)
            out.append((p, m))
    return out


def _existing_attention(model: nn.Module) -> list[tuple[str, nn.Module]]:
    found = []
    for path, m in _walk(model, into_attention=False):
        if is_existing_attention(m) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, m))
    return found


def _preceding_width(model: nn.Module, target: nn.Module, *, container: bool = False) -> tuple[int | None, int | None]:
    """Width and rank of ``target``'s output: its own, its last inner norm/conv, or the nearest before it."""
    if isinstance(target, AttentionChain):  # put in place of a model's attention by where="replace"
        first = target[0].layer if isinstance(target[0], IdentityBlend) else target[0]
        return int(first.channels), None
    if is_existing_attention(target):
        for m in target.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)) and m.in_channels > 1:
                return int(m.in_channels), _ndim_of(m)
            if isinstance(m, nn.Linear) and m.in_features > 1:
                return int(m.in_features), None
    own = _width_of(target) if (_is_norm(target) or _is_conv(target)) else None
    if own is not None:
        return own, _ndim_of(target)
    if not is_existing_attention(target):
        inner = [m for _, m in _walk(target, skip_names={"downsample", "shortcut"}, into_attention=False)
                 if _is_norm(m) or _is_conv(m)]
        if inner:
            # a container that concatenates (a DenseNet block) is wider than its last layer:
            # the next norm / conv after it says how wide its output is
            nxt = _following(model, target) if container else None
            if nxt is not None and nxt[0] != _width_of(inner[-1]):
                return nxt
            return _width_of(inner[-1]), _ndim_of(inner[-1])
    last = None
    for _, m in _walk(model, into_attention=False):
        if m is target:
            break
        if (_is_norm(m) or _is_conv(m)) and not _is_channels_last(m):
            last = m
    if last is None:
        return None, None
    return _width_of(last), _ndim_of(last)


def _following(model: nn.Module, target: nn.Module) -> tuple[int, int | None] | None:
    """Input width and rank of the first norm / convolution that runs after ``target``'s subtree."""
    inside = {id(m) for m in target.modules()}
    seen = False
    for _, m in _walk(model, into_attention=False):
        if m is target:
            seen = True
        elif seen and id(m) not in inside and not _is_channels_last(m):
            if _is_conv(m):
                return int(m.in_channels), _ndim_of(m)
            if _is_norm(m) and _width_of(m) is not None:
                return _width_of(m), _ndim_of(m)  # type: ignore[return-value]
    return None


def _summary(model: nn.Module) -> str:
    """The classes holding the network's convolutions, most frequent first: what the search saw."""
    counts: Counter[str] = Counter()
    for _, m in [("", model)] + list(_walk(model)):
        if any(_is_conv(c) for _, c in _children(m)):
            counts[type(m).__name__] += 1
    return ", ".join(f"{n} ×{c}" for n, c in counts.most_common(6)) or "no convolutions"


# --------------------------------------------------------------------------- positions


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
    plan = []
    for path, module, action in _positions(model, where, stages):
        width, _ = _preceding_width(model, module, container=where == "stage")
        if width is None:
            raise ConfigError(
                f"insert_attn: cannot tell the channel width after {path!r} ({type(module).__name__}): "
                "no norm or convolution in or before it"
            )
        plan.append(AttnPosition(path, width, type(module).__name__, action))
    return AttnPositions(plan)


def _no_positions(model: nn.Module, what: str) -> ConfigError:
    return ConfigError(
        f"insert_attn(where={what}) found no positions in {type(model).__name__}; its convolutions sit in: "
        f"{_summary(model)}. Name the modules to insert after with where='<glob>' (e.g. 'features.*.conv2') "
        "or a callable where=lambda path, module: ..., and check the plan with attn_positions()"
    )


def _stages(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[list[str]]]:
    """Stage positions and, per stage, the paths of its blocks."""
    blocks = _find_blocks(model)
    if blocks:
        paths = [p for p, _ in blocks]
        runs = _stage_runs(model, blocks)
        return [_stage_position(model, run, paths) for run in runs], [[p for p, _ in run] for run in runs]
    pools = _pool_runs(model)
    if pools:
        return pools, [[p] for p, _ in pools]
    containers = _container_stages(model)
    return containers, [[p] for p, _ in containers]


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


def _select_stages(stages: list[tuple[str, nn.Module]], wanted: Sequence[int | str] | None
                   ) -> list[tuple[str, nn.Module]]:
    """The ``(path, module)`` stages picked by 1-based numbers (negative from the end) / ``layerN`` / ``resN`` names."""
    return [stages[i] for i in _select(len(stages), [p for p, _ in stages], wanted)]


def _positions(model: nn.Module, where: Where, stages: Sequence[int | str] | None) -> list[tuple[str, nn.Module, str]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"insert_attn expects an nn.Module, got {type(model).__name__}")
    if where in ("block", "stage"):
        stage_pos, stage_blocks = _stages(model)
        selected = None
        if stages is not None:
            if not stage_pos:
                raise ConfigError(f"insert_attn: stages={stages!r} given, but found no stages in {type(model).__name__}")
            selected = _select(len(stage_pos), [p for p, _ in stage_pos], stages)
        if where == "stage":
            if not stage_pos:
                raise _no_positions(model, "'stage'")
            return [(p, m, "after") for i, (p, m) in enumerate(stage_pos) if selected is None or i in selected]
        blocks = _find_blocks(model)
        if blocks:
            if selected is not None:
                keep = {p for i in selected for p in stage_blocks[i]}
                blocks = [(p, b) for p, b in blocks if p in keep]
            out = []
            for path, block in blocks:
                anchor = _block_anchor(block)
                _, _, sub = _resolve(block, anchor)  # type: ignore[arg-type]
                out.append((f"{path}.{anchor}", sub.module if isinstance(sub, WithAttention) else sub, "after"))
            return out
        pools = _pool_runs(model)
        if pools:  # plain CNNs (VGG): a block is the conv stack between two poolings
            return [(p, m, "after") for i, (p, m) in enumerate(pools) if selected is None or i in selected]
        raise _no_positions(model, "'block'")
    if stages is not None:
        raise ConfigError(f"insert_attn: stages applies to where='block' or 'stage', not where={where!r}")
    if where == "conv":
        found = _conv_runs(model)
        convs = [p for p, m in _walk(model, into_attention=False) if _is_conv(m) and not is_existing_attention(m)]
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
        found = _existing_attention(model)
        if not found:
            raise ConfigError(
                f"insert_attn(where='replace') found no attention modules to replace in {type(model).__name__}: "
                f"it looks for {', '.join(sorted(c.rpartition('.')[2] for c in EXISTING_ATTENTION))} (torchvision / timm); "
                "use where='block' to add a layer instead"
            )
        return [(p, m, "replace") for p, m in found]
    if isinstance(where, str):
        found = [(p, m) for p, m in _walk(model) if fnmatch.fnmatchcase(p, where)]
        what = f"module paths matching {where!r} (where expects {', '.join(map(repr, WHERE))}, a glob or a callable)"
    elif callable(where):
        found = [(p, m) for p, m in _walk(model) if where(p, m)]
        what = "modules selected by the where callable"
    else:
        raise ConfigError(f"insert_attn expects where in {WHERE}, a glob string or a callable, got {where!r}")
    if not found:
        raise ConfigError(f"insert_attn found no {what} in {type(model).__name__}")
    for p, m in found:
        if _is_channels_last(m):
            raise ConfigError(
                f"insert_attn: the output of {p!r} ({type(m).__name__}) is channels-last or flat, not "
                "(B, C, H, W); attention layers need channels-first features. Pick a convolution or a "
                "channels-first norm (see attn_positions(model, 'block'))"
            )
    # a selected module inside another selected one would be wrapped twice: keep the outermost
    paths = [p for p, _ in found]
    return [(p, m, "after") for p, m in found if not any(p.startswith(q + ".") for q in paths if q != p)]


# --------------------------------------------------------------------------- attaching


def _attach(model: nn.Module, path: str, layer: nn.Module, action: str) -> None:
    parent, name, current = _resolve(model, path)
    if action == "replace":
        # in a chain of its own: the new layer's keys ("se.0.fc1.weight") never collide with
        # the replaced module's ("se.fc1.weight"), so old checkpoints report those as unexpected
        chain = AttentionChain(layer)
        if isinstance(current, WithAttention):
            current.module = chain
        else:
            setattr(parent, name, chain)
        return
    if isinstance(current, WithAttention):
        current.attn.append(layer)
        return
    if isinstance(current, (nn.ModuleList, nn.ModuleDict)) and type(current).forward is nn.Module.forward:
        raise ConfigError(f"insert_attn cannot insert after {path!r}: a {type(current).__name__} is not called as a layer")
    if _is_plain_sequential(current):
        current.append(layer)
        return
    if _is_plain_sequential(parent):
        names = list(parent._modules)
        after = [parent._modules[n] for n in names[names.index(name) + 1:]]
        if all(_is_attention(m) for m in after):
            parent.append(layer)
            return
    setattr(parent, name, WithAttention(current, layer))


# --------------------------------------------------------------------------- insert_attn


def insert_attn(
    model: nn.Module,
    name: str | type,
    *,
    where: Where = "block",
    stages: Sequence[int | str] | None = None,
    identity_init: bool = False,
    **layer_kwargs: Any,
) -> nn.Module:
    """Insert an attention layer at every matching position of ``model`` (in place).

    The layer width at each position is read from the model (the preceding norm's
    ``num_features`` or convolution's ``out_channels``). The original weights stay
    loadable: ``model.load_state_dict(original_state_dict, strict=False)`` reports only
    the new layers' keys as missing. Calling ``insert_attn`` again adds more layers;
    layers at the same position run in insertion order.

    Args:
        model: the network to modify; it is changed in place and returned.
        name: registry name of a shape-preserving ``"gate"`` layer, or a layer class.
        where: ``"block"`` (each block, at its family's placement: see
            ``docs/models.md``), ``"stage"`` (after whole stages), ``"conv"`` (after
            conv → [norm] → activation units), ``"replace"`` (in place of the
            network's own attention modules, e.g. the SE of EfficientNet), a
            module-path glob, or a callable ``fn(path, module) -> bool`` selecting
            the modules to insert after.
        stages: with ``"block"``/``"stage"``: which stages, 1-based (stage ``i`` is
            ``layer{i}`` in a ResNet; ``-1`` the last); ``"layer3"`` and the papers' ``"res4"``
            (= ``layer3``) are accepted too. The non-local paper's res3 + res4 is
            ``stages=(2, 3)``.
        identity_init: wrap each layer in :class:`IdentityBlend`
            (``x + γ·(layer(x) − x)``, ``γ = 0``), so outputs are unchanged at insertion.
        **layer_kwargs: options of the layer (``rd_ratio=1/16`` ...).

    Returns:
        ``model``.

    Raises:
        ConfigError: unknown option, a ``"pool"``/``"conv"`` kind layer, a layer for
            inputs of another rank (a 3-D ``non_local3d`` in a 2-D network), a
            channels-last position, or no matching position (the message lists what
            the search found).

    Example:
        >>> import torch, torchvision
        >>> net = torchvision.models.resnet18(weights=None).eval()
        >>> original = {k: v.clone() for k, v in net.state_dict().items()}
        >>> net = insert_attn(net, "se", rd_ratio=1 / 16)
        >>> res = net.load_state_dict(original, strict=False)
        >>> res.unexpected_keys, res.missing_keys[0]
        ([], 'layer1.0.bn2.attn.0.fc1.weight')
        >>> net(torch.randn(1, 3, 32, 32)).shape
        torch.Size([1, 1000])
    """
    label = name if isinstance(name, str) else getattr(name, "__name__", repr(name))
    info = None
    if isinstance(name, str) or (isinstance(name, type) and any(i.cls is name for i in _REGISTRY.values())):
        try:
            info = get_attn_info(name)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif not (isinstance(name, type) and issubclass(name, nn.Module)):
        raise ConfigError(f"insert_attn expects a layer name or nn.Module class, got {name!r}")
    if info is not None and info.kind != "gate":
        hint = {
            "pool": "a pooling head maps (B, C, H, W) to (B, D); use it as a classifier head (e.g. create_model('aacn'))",
            "conv": "it replaces convolutions and may change width; use a model built with it (e.g. create_model('aa_resnet50'))",
        }[info.kind]
        raise ConfigError(
            f"insert_attn cannot insert {label!r} inside a network: it is a {info.kind!r} layer, not a "
            f"shape-preserving 'gate' layer; {hint}"
        )
    positions = _positions(model, where, stages)
    plan = []
    for path, module, action in positions:
        width, ndim = _preceding_width(model, module, container=where == "stage")
        if width is None:
            raise ConfigError(
                f"insert_attn: cannot tell the channel width after {path!r} ({type(module).__name__}): "
                "no norm or convolution in or before it"
            )
        if info is not None and ndim is not None and ndim != info.ndim:
            raise ConfigError(
                f"insert_attn: {label!r} takes {info.ndim}-D inputs (batch included), but the features after "
                f"{path!r} are {ndim}-D ({type(module).__name__}); pick the layer variant for this network"
            )
        plan.append((path, width, action))
    layers = []
    for _, width, _ in plan:  # build everything first: a bad option changes nothing
        try:
            layer = create_attn(name, width, **layer_kwargs)
        except TypeError as e:
            raise ConfigError(str(e)) from None
        layers.append(IdentityBlend(layer) if identity_init else layer)
    ref = next(iter(model.parameters()), None)
    for (path, _, action), layer in zip(plan, layers):
        if ref is not None:
            layer.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        layer.train(model.training)
        _attach(model, path, layer, action)
    return model
