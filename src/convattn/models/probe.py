"""Reading a network: its norms, convolutions, widths, blocks and stages.

What ``attn_positions`` and ``insert_attn`` know about a model comes from here. The
walk sees a network by its original module paths: a :class:`WithAttention` stands
for the module it wraps, and layers ``insert_attn`` added are not entered. Blocks
are found by family (``_families.py``), else by shape (a class named like a block,
two or more convolutions, a last norm and a residual addition in its ``forward``).
"""

from __future__ import annotations

import inspect
import re
from collections import Counter
from typing import Iterable, Iterator

import torch
from torch import nn

from ..layers._recording import RecordsAttention
from ._families import family_of, is_existing_attention
from ._wrappers import AttentionChain, IdentityBlend, WithAttention, is_inserted

__all__ = [
    "block_anchor",
    "conv_runs",
    "conv_summary",
    "existing_attention",
    "find_blocks",
    "find_stages",
    "is_channels_last",
    "is_conv",
    "is_plain_sequential",
    "pool_runs",
    "preceding_width",
    "resolve",
    "walk",
]

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


def is_conv(m: nn.Module) -> bool:
    """Whether ``m`` is a convolution (1-, 2- or 3-D, transposed included)."""
    return isinstance(m, _CONV_TYPES)


def _is_act(m: nn.Module) -> bool:
    return isinstance(m, _ACT_TYPES) or type(m).__name__ in {"Swish", "HardSwish", "QuickGELU", "StarReLU"}


def is_channels_last(m: nn.Module) -> bool:
    """Modules whose output is not channels-first ``(B, C, ...)``: linear layers, plain LayerNorm."""
    if isinstance(m, nn.Linear):
        return True
    return isinstance(m, nn.LayerNorm) and "2d" not in type(m).__name__.lower()


def _width_of(m: nn.Module) -> int | None:
    """Channel width of a module's output, for norms and convolutions; None if unknown."""
    if is_conv(m):
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
        if is_inserted(child):
            continue
        yield name, child.module if isinstance(child, WithAttention) else child


def walk(module: nn.Module, prefix: str = "", skip_names: Iterable[str] = (), into_attention: bool = True
          ) -> Iterator[tuple[str, nn.Module]]:
    """Descendants by their original paths, in registration order, not entering inserted layers."""
    skip = set(skip_names)
    for name, child in _children(module):
        if name in skip:
            continue
        path = f"{prefix}.{name}" if prefix else name
        yield path, child
        if into_attention or not is_existing_attention(child):
            yield from walk(child, path, into_attention=into_attention)


def resolve(model: nn.Module, path: str) -> tuple[nn.Module, str, nn.Module]:
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
    norms = [(p, m) for p, m in walk(block, skip_names=_SKIP_CHILDREN) if _is_norm(m)]
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
    convs = [c for _, c in walk(m, skip_names=_SKIP_CHILDREN) if is_conv(c)]
    return len(convs) >= 2 and _block_last_norm(m) is not None and _has_residual(type(m))


def block_anchor(block: nn.Module) -> str | None:
    """Path inside ``block`` after which its layer goes (the family's placement)."""
    fam = family_of(block)
    if fam is not None:
        return fam.anchor(block)
    if _is_generic_block(block):
        return _block_last_norm(block)[0]  # type: ignore[index]
    return None


def find_blocks(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    """The outermost blocks of ``model`` that have a placement (:func:`block_anchor`), by path."""
    found = []
    for name, child in _children(model):
        path = f"{prefix}.{name}" if prefix else name
        if is_existing_attention(child):
            continue
        if block_anchor(child) is not None:
            found.append((path, child))
        else:
            found += find_blocks(child, path)
    return found


def is_plain_sequential(m: nn.Module) -> bool:
    """An ``nn.Sequential`` running its children in order, so a layer can be appended to it."""
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
        inner = [m for _, m in walk(block, into_attention=False) if _is_norm(m) or is_conv(m)]
        main = [m for _, m in walk(block, skip_names={"downsample", "shortcut", "proj", "branch1"}, into_attention=False)
                if _is_norm(m) or is_conv(m)]
        strided = any(is_conv(m) and max(m.stride) > 1 for m in inner)
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
        _, _, parent = resolve(model, parent_path)
        parent = parent.module if isinstance(parent, WithAttention) else parent
        kids = [n for n, _ in _children(parent)]
        if not is_plain_sequential(parent) or kids[-1] == last_path.rpartition(".")[2]:
            stage_path = _parent_path(parent_path)
            if stage_path and type(resolve(model, stage_path)[2]).__name__.startswith("CrossStage"):
                # a CSP stage merges its blocks' output with the cross branch after them
                _, _, stage = resolve(model, stage_path)
                return stage_path, stage.module if isinstance(stage, WithAttention) else stage
            return parent_path, parent
    return last_path, last


def _container_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``layer1, layer2, ...``, a ``stages`` container or ``s1, s2, ...``: stages of networks without known blocks."""
    for path, m in [("", model)] + list(walk(model)):
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


def pool_runs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Activations closing the last conv run before each pooling layer (VGG's blocks)."""
    found = []
    for path, seq in [("", model)] + list(walk(model)):
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
        if not is_conv(m):
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
    return conv is not None and is_conv(conv) and act is not None and not isinstance(act, nn.Identity)


def conv_runs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """conv → [norm] → activation units: runs inside an nn.Sequential, and timm ConvNormAct modules."""
    found = []
    for path, m in [("", model)] + list(walk(model, into_attention=False)):
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


def existing_attention(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The torchvision / timm attention modules of ``model`` (outermost ones), by path."""
    found = []
    for path, m in walk(model, into_attention=False):
        if is_existing_attention(m) and not any(path.startswith(p + ".") for p, _ in found):
            found.append((path, m))
    return found


def preceding_width(model: nn.Module, target: nn.Module, *, container: bool = False) -> tuple[int | None, int | None]:
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
    own = _width_of(target) if (_is_norm(target) or is_conv(target)) else None
    if own is not None:
        return own, _ndim_of(target)
    if not is_existing_attention(target):
        inner = [m for _, m in walk(target, skip_names={"downsample", "shortcut"}, into_attention=False)
                 if _is_norm(m) or is_conv(m)]
        if inner:
            # a container that concatenates (a DenseNet block) is wider than its last layer:
            # the next norm / conv after it says how wide its output is
            nxt = _following(model, target) if container else None
            if nxt is not None and nxt[0] != _width_of(inner[-1]):
                return nxt
            return _width_of(inner[-1]), _ndim_of(inner[-1])
    last = None
    for _, m in walk(model, into_attention=False):
        if m is target:
            break
        if (_is_norm(m) or is_conv(m)) and not is_channels_last(m):
            last = m
    if last is None:
        return None, None
    return _width_of(last), _ndim_of(last)


def _following(model: nn.Module, target: nn.Module) -> tuple[int, int | None] | None:
    """Input width and rank of the first norm / convolution that runs after ``target``'s subtree."""
    inside = {id(m) for m in target.modules()}
    seen = False
    for _, m in walk(model, into_attention=False):
        if m is target:
            seen = True
        elif seen and id(m) not in inside and not is_channels_last(m):
            if is_conv(m):
                return int(m.in_channels), _ndim_of(m)
            if _is_norm(m) and _width_of(m) is not None:
                return _width_of(m), _ndim_of(m)  # type: ignore[return-value]
    return None


def conv_summary(model: nn.Module) -> str:
    """The classes holding the network's convolutions, most frequent first: what the search saw."""
    counts: Counter[str] = Counter()
    for _, m in [("", model)] + list(walk(model)):
        if any(is_conv(c) for _, c in _children(m)):
            counts[type(m).__name__] += 1
    return ", ".join(f"{n} ×{c}" for n, c in counts.most_common(6)) or "no convolutions"


def find_stages(model: nn.Module) -> tuple[list[tuple[str, nn.Module]], list[list[str]]]:
    """Stage positions and, per stage, the paths of its blocks."""
    blocks = find_blocks(model)
    if blocks:
        paths = [p for p, _ in blocks]
        runs = _stage_runs(model, blocks)
        return [_stage_position(model, run, paths) for run in runs], [[p for p, _ in run] for run in runs]
    pools = pool_runs(model)
    if pools:
        return pools, [[p] for p, _ in pools]
    containers = _container_stages(model)
    return containers, [[p] for p, _ in containers]
