"""``insert_attn``: put attention layers into an existing CNN, keeping its weights loadable.

Where the layers go is :mod:`convattn.models.positions`' job (``where="block"``,
``"stage"``, ``"conv"``, ``"replace"``, a glob or a callable). Insertion only *adds*
modules; no existing module changes its class. After a module ``m`` the layer is
attached as follows:

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

from typing import Any, Sequence

from torch import nn

from ..exceptions import ConfigError
from ..registry import LAYERS, create_attn, get_attn_info
from ._wrappers import AttentionChain, IdentityBlend, WithAttention, is_inserted
from .positions import Where, plan_positions
from .probe import is_plain_sequential, resolve

__all__ = ["insert_attn", "maybe_insert_attn"]


def _attach(model: nn.Module, path: str, layer: nn.Module, action: str) -> None:
    parent, name, current = resolve(model, path)
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
    if is_plain_sequential(current):
        current.append(layer)
        return
    if is_plain_sequential(parent):
        names = list(parent._modules)
        after = [parent._modules[n] for n in names[names.index(name) + 1:]]
        if all(is_inserted(m) for m in after):
            parent.append(layer)
            return
    setattr(parent, name, WithAttention(current, layer))


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
        ConfigError: unknown layer, a ``"pool"``/``"conv"`` kind layer, a layer for
            inputs of another rank (a 3-D ``non_local3d`` in a 2-D network), a
            channels-last position, or no matching position (the message lists what
            the search found).
        UnknownOptionError: an option the layer does not take (a ``TypeError``).

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
    if isinstance(name, str):
        info = get_attn_info(name)
    elif isinstance(name, type) and issubclass(name, nn.Module):
        info = LAYERS.find(name)  # None for a layer class of the user's own
    else:
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
    plan = plan_positions(model, where, stages)
    for p in plan:
        if info is not None and p.ndim is not None and p.ndim != info.ndim:
            raise ConfigError(
                f"insert_attn: {label!r} takes {info.ndim}-D inputs (batch included), but the features after "
                f"{p.path!r} are {p.ndim}-D ({type(p.module).__name__}); pick the layer variant for this network"
            )
    layers = []
    for p in plan:  # build everything first: a bad option changes nothing
        layer = create_attn(name, p.width, **layer_kwargs)
        layers.append(IdentityBlend(layer) if identity_init else layer)
    ref = next(iter(model.parameters()), None)
    for p, layer in zip(plan, layers):
        if ref is not None:
            layer.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        layer.train(model.training)
        _attach(model, p.path, layer, p.action)
    return model


def maybe_insert_attn(
    model: nn.Module,
    attention: str | type | None,
    attn_kwargs: dict[str, Any] | None = None,
    *,
    where: Where = "block",
    stages: Sequence[int | str] | None = None,
    identity_init: bool = False,
) -> nn.Module:
    """:func:`insert_attn` for a model factory's ``attention`` option: ``None`` leaves ``model`` as it is."""
    if attention is None:
        return model
    return insert_attn(model, attention, where=where, stages=stages, identity_init=identity_init, **(attn_kwargs or {}))
