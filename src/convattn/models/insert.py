"""``insert_attn``: put attention layers into an existing CNN, keeping its weights loadable.

Three kinds of position are found automatically:

``where="block"``
    At the end of each residual branch, after the branch's last normalisation and
    before the residual addition: the placement of SE (Hu et al., CVPR 2018, Fig. 3)
    and CBAM (Woo et al., ECCV 2018, Fig. 3). Works on torchvision ResNet / ResNeXt /
    Wide-ResNet / video ResNet blocks, timm ResNet-family blocks and any module that
    looks like one (see :func:`attn_positions`).
``where="stage"``
    After whole stages (``layer1`` ... ``layer4`` in torchvision and timm ResNets,
    ``stages.0`` ... in timm's newer families): the placement of the non-local block
    (Wang et al., CVPR 2018).
``where="conv"``
    After every convolution → [normalisation] → activation run in a plain CNN
    (``nn.Sequential`` bodies such as torchvision VGG's ``features``).

``where`` may also be a module-path glob (``"layer3.*.bn2"``) or a callable
``fn(path, module) -> bool``; the layer goes after each selected module.

How a layer is attached, so that the original ``state_dict`` keys stay valid:

- after a module that is a plain ``nn.Sequential`` (a stage): the layer is appended
  to it (``layer3.6`` after a six-block ``layer3``);
- after any other module ``m`` (a norm, a conv, an activation): ``m``'s class is
  swapped in place for a subclass that runs ``m`` and then ``m.attn`` (an
  :class:`AttentionChain`). ``m``'s own parameters keep their names (``bn2.weight``),
  the new ones appear as ``bn2.attn.0.*``; a second insertion at the same position
  appends ``bn2.attn.1``, so two layers at one position are both kept, in order.

Loading the original network's weights with ``load_state_dict(sd, strict=False)``
therefore reports only the new layers' keys as missing and nothing as unexpected.
"""

from __future__ import annotations

import fnmatch
import inspect
import re
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from ..exceptions import ConfigError
from ..layers._recording import RecordsAttention
from ..registry import _REGISTRY, create_attn, get_attn_info

__all__ = ["insert_attn", "attn_positions", "AttentionChain", "IdentityBlend", "WHERE"]

WHERE = ("block", "stage", "conv")

Where = str | Callable[[str, nn.Module], bool]


# --------------------------------------------------------------------------- wrappers


class AttentionChain(nn.Sequential):
    """The attention layers attached after one module, applied in insertion order."""


class IdentityBlend(nn.Module):
    """``x + γ · (layer(x) − x)`` with a learnable scalar ``γ`` that starts at 0.

    At initialisation the output equals the input exactly, so a pretrained network
    keeps its outputs when the layer is inserted; training moves ``γ`` away from 0.

    Args:
        layer: the shape-preserving layer to blend in.
        gamma: initial value of ``γ``.

    Shape:
        same as ``layer``: ``(B, C, *) -> (B, C, *)``.

    Example:
        >>> import torch, convattn
        >>> blend = IdentityBlend(convattn.create_attn("se", 16))
        >>> x = torch.randn(2, 16, 5, 4)
        >>> torch.equal(blend(x), x)
        True
    """

    def __init__(self, layer: nn.Module, *, gamma: float = 0.0) -> None:
        super().__init__()
        self.layer = layer
        self.gamma = nn.Parameter(torch.full((), float(gamma)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.gamma * (self.layer(x) - x)


class _AttnAfter:
    """Mixin for the in-place subclasses: run the original module, then ``self.attn``."""

    _base_cls: type

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.attn(super().forward(*args, **kwargs))  # type: ignore[misc]

    def _check_input_dim(self, input: torch.Tensor) -> None:
        # torch.fx traces into the wrapped module's forward (it is no longer a torch.nn leaf);
        # batch norm's input check branches on the proxy's dim(), so it runs on real tensors only.
        if not isinstance(input, torch.fx.Proxy):
            super()._check_input_dim(input)  # type: ignore[misc]

    def __reduce_ex__(self, protocol: int) -> tuple:
        # The subclass is built at run time; pickle/deepcopy rebuild it from the base class.
        return (_rebuild_wrapped, (self._base_cls,), self.__dict__)


_WRAPPED: dict[type, type] = {}


def _wrapped_class(base: type) -> type:
    if issubclass(base, _AttnAfter):
        return base
    cls = _WRAPPED.get(base)
    if cls is None:
        cls = type(f"{base.__name__}WithAttn", (_AttnAfter, base), {"_base_cls": base, "__module__": __name__})
        _WRAPPED[base] = cls
    return cls


def _rebuild_wrapped(base: type) -> nn.Module:
    cls = _wrapped_class(base)
    return cls.__new__(cls)


def _is_plain_sequential(m: nn.Module) -> bool:
    return isinstance(m, nn.Sequential) and type(m).forward is nn.Sequential.forward and not isinstance(
        m, AttentionChain
    )


def _attach_after(module: nn.Module, layer: nn.Module) -> None:
    """Make ``module`` apply ``layer`` to its output, keeping its state_dict keys."""
    if _is_plain_sequential(module):
        module.append(layer)
        return
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        raise ConfigError(f"insert_attn cannot insert after a {type(module).__name__}: it is not called as a layer")
    if not isinstance(module, _AttnAfter):
        module.__class__ = _wrapped_class(type(module))
        module.attn = AttentionChain()
    module.attn.append(layer)


# --------------------------------------------------------------------------- model inspection

_NORM_TYPES: tuple[type, ...] = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
_CONV_TYPES: tuple[type, ...] = (nn.modules.conv._ConvNd,)
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
    return "norm" in name and not isinstance(m, (AttentionChain, RecordsAttention)) and _width_of(m) is not None


def _is_conv(m: nn.Module) -> bool:
    return isinstance(m, _CONV_TYPES)


def _is_act(m: nn.Module) -> bool:
    return isinstance(m, _ACT_TYPES) or type(m).__name__ in {"Swish", "HardSwish", "QuickGELU", "StarReLU"}


def _is_attention(m: nn.Module) -> bool:
    return isinstance(m, (AttentionChain, IdentityBlend, RecordsAttention)) or any(
        info.cls is type(m) for info in _REGISTRY.values()
    )


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


def _walk(module: nn.Module, prefix: str = "", skip_names: Iterable[str] = ()) -> Iterable[tuple[str, nn.Module]]:
    """Descendants in registration order, not entering attention layers or skipped children."""
    skip = set(skip_names)
    for name, child in module.named_children():
        if name in skip or _is_attention(child):
            continue
        path = f"{prefix}.{name}" if prefix else name
        yield path, child
        yield from _walk(child, path)


def _known_block_types() -> tuple[type, ...]:
    from torchvision.models import resnet as tv_resnet
    from torchvision.models.video import resnet as tv_video

    types: list[type] = [tv_resnet.BasicBlock, tv_resnet.Bottleneck, tv_video.BasicBlock, tv_video.Bottleneck]
    try:  # timm is optional
        from timm.models import resnet as timm_resnet

        types += [timm_resnet.BasicBlock, timm_resnet.Bottleneck]
    except ImportError:  # pragma: no cover - depends on the environment
        pass
    return tuple(types)


def _has_residual(cls: type) -> bool:
    try:
        src = inspect.getsource(cls.forward)
    except (OSError, TypeError):
        return False
    return bool(_RESIDUAL_HINT.search(src))


def _block_last_norm(block: nn.Module) -> tuple[str, nn.Module] | None:
    norms = [(p, m) for p, m in _walk(block, skip_names=_SKIP_CHILDREN) if _is_norm(m)]
    return norms[-1] if norms else None


def _is_block(m: nn.Module) -> bool:
    if _is_attention(m) or isinstance(m, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return False
    if isinstance(m, _known_block_types()):
        return True
    if not _BLOCK_NAME.search(type(m).__name__):
        return False
    convs = [c for _, c in _walk(m, skip_names=_SKIP_CHILDREN) if _is_conv(c)]
    return len(convs) >= 2 and _block_last_norm(m) is not None and _has_residual(type(m))


def _find_blocks(model: nn.Module, prefix: str = "") -> list[tuple[str, nn.Module]]:
    found = []
    for name, child in model.named_children():
        path = f"{prefix}.{name}" if prefix else name
        if _is_attention(child):
            continue
        if _is_block(child):
            found.append((path, child))
        else:
            found += _find_blocks(child, path)
    return found


def _find_stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``layer1, layer2, ...`` (torchvision / timm ResNets) or ``stages.*`` (timm), outermost first."""
    for path, m in model.named_modules():
        if _is_attention(m):
            continue
        layers = []
        i = 1
        while isinstance(getattr(m, f"layer{i}", None), nn.Module):
            layers.append((f"{path}.layer{i}" if path else f"layer{i}", getattr(m, f"layer{i}")))
            i += 1
        if layers:
            return layers
        stages = getattr(m, "stages", None)
        if isinstance(stages, (nn.Sequential, nn.ModuleList)) and len(stages) > 0:
            base = f"{path}.stages" if path else "stages"
            return [(f"{base}.{n}", s) for n, s in stages.named_children()]
    return []


def _select_stages(stages: list[tuple[str, nn.Module]], wanted: Sequence[int | str] | None) -> list[tuple[str, nn.Module]]:
    if wanted is None:
        return stages
    if isinstance(wanted, (int, str)):
        wanted = (wanted,)
    chosen = []
    for w in wanted:
        idx: int | None = None
        if isinstance(w, bool):
            idx = None
        elif isinstance(w, int):
            idx = w
        elif isinstance(w, str) and re.fullmatch(r"(layer|stage)?\d+", w):
            idx = int(re.sub(r"\D", "", w))
        elif isinstance(w, str) and re.fullmatch(r"res\d+", w):
            idx = int(w[3:]) - 1  # the papers' res2..res5 are layer1..layer4
        if idx is None or not 1 <= idx <= len(stages):
            raise ConfigError(
                f"insert_attn: stages expects 1-based stage numbers 1..{len(stages)} (or 'layerN' / 'resN' names), "
                f"got {w!r}; the model's stages are {[p for p, _ in stages]}"
            )
        chosen.append(stages[idx - 1])
    return chosen


def _conv_runs(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Activations that close a conv → [norm] → act run inside an nn.Sequential."""
    found = []
    for path, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential) or _is_attention(seq):
            continue
        kids = list(seq.named_children())
        for i, (name, m) in enumerate(kids):
            if not _is_conv(m):
                continue
            j = i + 1
            if j < len(kids) and _is_norm(kids[j][1]):
                j += 1
            if j < len(kids) and _is_act(kids[j][1]):
                found.append((f"{path}.{kids[j][0]}" if path else kids[j][0], kids[j][1]))
    return found


def _preceding_width(model: nn.Module, target: nn.Module) -> tuple[int | None, int | None]:
    """Width and rank of ``target``'s output: its own, its last inner norm/conv, or the nearest before it."""
    own = _width_of(target) if (_is_norm(target) or _is_conv(target)) else None
    if own is not None:
        return own, _ndim_of(target)
    inner = [m for _, m in _walk(target, skip_names={"downsample", "shortcut"}) if _is_norm(m) or _is_conv(m)]
    if inner:
        return _width_of(inner[-1]), _ndim_of(inner[-1])
    last = None
    for _, m in _walk(model):
        if m is target:
            break
        if _is_norm(m) or _is_conv(m):
            last = m
    if last is None:
        return None, None
    return _width_of(last), _ndim_of(last)


def attn_positions(model: nn.Module, where: Where = "block", *, stages: Sequence[int | str] | None = None) -> list[str]:
    """Module paths after which :func:`insert_attn` would put a layer.

    Blocks are torchvision / timm ``BasicBlock`` / ``Bottleneck`` (2-D and video) or
    any module whose class name contains *Block*, *Bottleneck* or *Basic*, that has at
    least two convolutions and a normalisation outside its shortcut branch, and whose
    ``forward`` adds a residual. The returned path is the branch's last norm.

    Args:
        model: the network.
        where: ``"block"``, ``"stage"``, ``"conv"``, a module-path glob or a callable
            ``fn(path, module) -> bool``.
        stages: for ``"block"`` and ``"stage"``: 1-based stage numbers (stage ``i`` is
            ``layer{i}``; ``"res4"`` means the papers' res4 = ``layer3``), default all.

    Example:
        >>> import torchvision
        >>> net = torchvision.models.resnet18(weights=None)
        >>> attn_positions(net, "block", stages=[4])
        ['layer4.0.bn2', 'layer4.1.bn2']
        >>> attn_positions(net, "stage", stages=["res4"])
        ['layer3']
    """
    return [p for p, _ in _positions(model, where, stages)]


def _positions(model: nn.Module, where: Where, stages: Sequence[int | str] | None) -> list[tuple[str, nn.Module]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"insert_attn expects an nn.Module, got {type(model).__name__}")
    if where in ("block", "stage"):
        all_stages = _find_stages(model)
        if where == "stage":
            if not all_stages:
                raise ConfigError(
                    f"insert_attn(where='stage') found no stages in {type(model).__name__}: searched for children "
                    "named layer1, layer2, ... (torchvision/timm ResNets) or a 'stages' container (timm); "
                    "use where='block', where='conv' or a module-path glob instead"
                )
            return _select_stages(all_stages, stages)
        blocks = _find_blocks(model)
        if stages is not None:
            if not all_stages:
                raise ConfigError(
                    f"insert_attn: stages={stages!r} given, but {type(model).__name__} has no layer1.. or stages.* children"
                )
            prefixes = [p + "." for p, _ in _select_stages(all_stages, stages)]
            blocks = [(p, b) for p, b in blocks if any(p.startswith(pre) for pre in prefixes)]
        if not blocks:
            raise ConfigError(
                f"insert_attn(where='block') found no residual blocks in {type(model).__name__}"
                + (f" within stages {stages!r}" if stages is not None else "")
                + ": searched for torchvision/timm BasicBlock/Bottleneck and modules named *Block*/*Bottleneck* "
                "with two convolutions, a norm and a residual addition; use where='conv' for plain CNNs, "
                "where='stage', a module-path glob or a callable"
            )
        out = []
        for path, block in blocks:
            norm_path, norm = _block_last_norm(block)  # type: ignore[misc]
            out.append((f"{path}.{norm_path}", norm))
        return out
    if stages is not None:
        raise ConfigError(f"insert_attn: stages applies to where='block' or 'stage', not where={where!r}")
    if where == "conv":
        found = _conv_runs(model)
        if not found:
            raise ConfigError(
                f"insert_attn(where='conv') found no conv → [norm] → activation runs in {type(model).__name__}: "
                "it searches the children of nn.Sequential containers; use where='block' for residual networks "
                "or a module-path glob / callable"
            )
        return found
    if isinstance(where, str):
        found = [(p, m) for p, m in _walk(model) if fnmatch.fnmatchcase(p, where)]
        what = f"module paths matching {where!r} (where expects 'block', 'stage', 'conv', a glob or a callable)"
    elif callable(where):
        found = [(p, m) for p, m in _walk(model) if where(p, m)]
        what = "modules selected by the where callable"
    else:
        raise ConfigError(f"insert_attn expects where in {WHERE}, a glob string or a callable, got {where!r}")
    if not found:
        raise ConfigError(f"insert_attn found no {what} in {type(model).__name__}")
    # a selected module inside another selected one would be wrapped twice: keep the outermost
    paths = [p for p, _ in found]
    return [(p, m) for p, m in found if not any(p.startswith(q + ".") for q in paths if q != p)]


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
        where: ``"block"`` (end of each residual branch, before the addition),
            ``"stage"`` (after whole stages), ``"conv"`` (after conv → [norm] →
            activation runs of plain CNNs), a module-path glob, or a callable
            ``fn(path, module) -> bool`` selecting the modules to insert after.
        stages: with ``"block"``/``"stage"``: which stages, 1-based (stage ``i`` is
            ``layer{i}``); ``"layer3"`` and the papers' ``"res4"`` (= ``layer3``) are
            accepted too. The non-local paper's res3 + res4 is ``stages=(2, 3)``.
        identity_init: wrap each layer in :class:`IdentityBlend`
            (``x + γ·(layer(x) − x)``, ``γ = 0``), so outputs are unchanged at insertion.
        **layer_kwargs: options of the layer (``rd_ratio=1/16`` ...).

    Returns:
        ``model``.

    Raises:
        ConfigError: unknown option, a ``"pool"``/``"conv"`` kind layer, a layer for
            inputs of another rank (a 3-D ``non_local3d`` in a 2-D network), or no
            matching position (the message says what was searched for).

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
    for path, module in positions:
        width, ndim = _preceding_width(model, module)
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
        plan.append((module, width))
    layers = []
    for module, width in plan:  # build everything first: a bad option changes nothing
        try:
            layer = create_attn(name, width, **layer_kwargs)
        except TypeError as e:
            raise ConfigError(str(e)) from None
        layers.append(IdentityBlend(layer) if identity_init else layer)
    ref = next(iter(model.parameters()), None)
    for (module, _), layer in zip(plan, layers):
        if ref is not None:
            layer.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        layer.train(model.training)
        _attach_after(module, layer)
    return model
