"""Pretrained weights for registered networks, and the fine-tuning groups of any network.

``load_weights(model, name, weights)`` fills ``model`` (built by ``create_model(name, ...)``,
attention included) from torchvision's weights API (``"DEFAULT"``, ``"IMAGENET1K_V1"``), timm's
pretrained mechanism (``"DEFAULT"`` or a tag such as ``"pycls_in1k"``), a file (a plain state dict,
a torchvision / timm checkpoint, a convattn ``.pt``) or a state dict. Keys are matched through the
wrappers ``insert_attn`` adds (``bn2.weight`` -> ``bn2.module.weight``); the classifier and the
inserted layers are the only tensors allowed to stay new. Nothing is downloaded unless asked:
weights missing from the cache raise one line naming the file and the folder it belongs in.

``finetune_groups(model)`` splits parameters into ``backbone``, ``attention`` (what
``insert_attn`` added, and convattn layers) and ``head`` (the classifier).
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping
from urllib.parse import urlparse

import torch
from torch import nn

from ..exceptions import ConfigError
from ._wrappers import WithAttention, is_inserted

__all__ = [
    "classifier_path", "finetune_groups", "read_state_dict", "match_state", "load_state", "load_weights",
    "weights_preprocessing", "is_weights_file",
]

_log = logging.getLogger(__name__)
_HEAD_NAMES = ("fc", "classifier", "head", "last_linear")
_CONTAINERS = ("state_dict", "model", "state_dict_ema", "model_ema", "module")
_FILE_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar")


def _inserted_paths(model: nn.Module) -> list[str]:
    return [p for p, m in model.named_modules() if p and is_inserted(m)]


def _under(key: str, paths: list[str]) -> bool:
    return any(key.startswith(p + ".") for p in paths)


def classifier_path(model: nn.Module) -> str:
    """The module path of ``model``'s classifier: timm's ``get_classifier()``, else a child named
    ``fc`` / ``classifier`` / ``head`` / ``last_linear`` holding an ``nn.Linear``, else the last ``nn.Linear``.

    Raises:
        ConfigError: no classifier found.
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        head = get()
        for path, m in model.named_modules():
            if m is head and path and any(True for _ in m.parameters()):
                return path
    children = dict(model.named_children())
    for name in _HEAD_NAMES:
        child = children.get(name)
        if child is not None and any(isinstance(m, nn.Linear) for m in child.modules()):
            return name
    inserted = _inserted_paths(model)
    linears = [p for p, m in model.named_modules() if isinstance(m, nn.Linear) and not _under(p, inserted)]
    if not linears:
        raise ConfigError(
            f"cannot find the classifier of {type(model).__name__}: expected get_classifier(), a child named "
            f"{', '.join(_HEAD_NAMES)} holding an nn.Linear, or any nn.Linear; got none"
        )
    return linears[-1]


def finetune_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """``{"backbone", "attention", "head"}`` parameter lists of any network (empty groups left out).

    ``attention``: parameters of modules ``insert_attn`` added and of convattn layers;
    ``head``: the classifier's (:func:`classifier_path`; no ``head`` group where none is found, as in a
    fully convolutional network); ``backbone``: the rest.

    Example:
        >>> import torchvision, convattn
        >>> net = convattn.insert_attn(torchvision.models.resnet18(weights=None), "se")
        >>> {k: len(v) for k, v in finetune_groups(net).items()}
        {'backbone': 60, 'attention': 32, 'head': 2}
    """
    inserted = _inserted_paths(model)
    try:
        heads = [classifier_path(model)]
    except ConfigError:
        heads = []
    groups: dict[str, list[nn.Parameter]] = {"backbone": [], "attention": [], "head": []}
    for name, p in model.named_parameters():
        group = "attention" if _under(name, inserted) else "head" if _under(name, heads) else "backbone"
        groups[group].append(p)
    return {k: v for k, v in groups.items() if v}


def is_weights_file(weights: str | os.PathLike) -> bool:
    """Whether ``weights`` names a file or folder (a path) rather than a weight name like ``DEFAULT``."""
    text = os.fspath(weights)
    return "/" in text or os.sep in text or Path(text).suffix in _FILE_SUFFIXES or Path(text).exists()


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file: a plain state dict, or one held under ``state_dict`` / ``model`` /
    ``state_dict_ema`` (torchvision, timm, convattn, Lightning); a ``module.`` prefix (DDP) is removed.
    Read with ``weights_only=True`` (``.safetensors`` through safetensors).

    Raises:
        ConfigError: a missing file, or one that holds no state dict.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"checkpoint {str(p)!r} does not exist (expected a state-dict file or a run directory)")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(p), device="cpu")
        else:
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many kinds for a file that is not a checkpoint
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{str(p)!r} is not a checkpoint torch.load(weights_only=True) can read ({first[:200]})") from None
    state = _find_state(obj)
    if state is None:
        got = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, Mapping) else type(obj).__name__
        raise ConfigError(
            f"{str(p)!r} is not a checkpoint: expected a state dict (names -> tensors) or a dict holding one "
            f"under {', '.join(map(repr, _CONTAINERS))}; got {got}"
        )
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _find_state(obj: Any) -> dict[str, torch.Tensor] | None:
    if not isinstance(obj, Mapping):
        return None
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if tensors and len(tensors) == len(obj):
        return tensors
    for key in _CONTAINERS:
        inner = _find_state(obj.get(key))
        if inner:
            return inner
    return None


def _bare_names(model: nn.Module, own: Mapping[str, Any]) -> dict[str, str]:
    """``{key as saved before insertion: key in model}`` (``bn2.weight`` -> ``bn2.module.weight``)."""
    wrappers = {p for p, m in model.named_modules() if isinstance(m, WithAttention)}
    out = {}
    for key in own:
        kept, path = [], ""
        for part in key.split("."):
            if part == "module" and path in wrappers:
                path += ".module"
                continue
            kept.append(part)
            path = f"{path}.{part}" if path else part
        out[".".join(kept)] = key
    return out


def match_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Map ``state``'s keys onto ``model``'s (through :class:`WithAttention` wrappers) without loading.

    Returns:
        ``(tensors to load under the model's keys, {"loaded", "new", "skipped", "unused"})``: ``new`` the
        model's keys left at their initialisation, ``skipped`` ``"key: (saved shape) vs (model shape)"``
        for tensors of another shape, ``unused`` the keys the model lacks.
    """
    own = model.state_dict()
    bare = _bare_names(model, own)
    mapped: dict[str, torch.Tensor] = {}
    skipped, unused = [], []
    for key, value in state.items():
        real = key if key in own else bare.get(key)
        if real is None:
            unused.append(key)
        elif tuple(own[real].shape) != tuple(value.shape):
            skipped.append(f"{key}: {tuple(value.shape)} vs {tuple(own[real].shape)}")
        else:
            mapped[real] = value
    report = {"loaded": sorted(mapped), "new": sorted(k for k in own if k not in mapped), "skipped": skipped,
              "unused": sorted(unused)}
    return mapped, report


def load_state(model: nn.Module, mapped: Mapping[str, torch.Tensor]) -> None:
    """Copy tensors already matched by :func:`match_state` into ``model``."""
    model.load_state_dict(dict(mapped), strict=False)


def _hub_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _offline(what: str, file: Path | str, folder: Path | str, hint: str) -> ConfigError:
    return ConfigError(
        f"pretrained weights {what} are not in the local cache: expected {file} in {folder} ({hint}), "
        "or pass --download (download=True) to fetch them"
    )


def _torchvision_weights(model: str, arch: str, weights: str) -> Any:
    from torchvision.models import get_model_weights

    enum = get_model_weights(arch)
    key = weights.rsplit(".", 1)[-1]
    if key.upper() == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[key]
    except KeyError:
        raise ConfigError(
            f"unknown weights {weights!r} for {model!r}: expected DEFAULT, {', '.join(w.name for w in enum)} "
            "(torchvision), a file or a run directory"
        ) from None


def _timm_cfg(model: str, arch: str, weights: str) -> tuple[str, Any]:
    import timm

    full = arch if weights.upper() == "DEFAULT" else f"{arch}.{weights}"
    try:
        cfg = timm.models.get_pretrained_cfg(full)
    except RuntimeError:
        cfg = None
    if cfg is None:
        tags = [n.split(".", 1)[1] for n in timm.list_pretrained(f"{arch}.*")]
        raise ConfigError(
            f"unknown weights {weights!r} for {model!r}: expected DEFAULT, {', '.join(tags) or 'no timm tags'} "
            "(timm), a file or a run directory"
        )
    return f"{arch}.{cfg.tag}" if cfg.tag else arch, cfg


def _timm_state(model: str, arch: str, weights: str, download: bool) -> tuple[dict[str, torch.Tensor], str]:
    import timm

    full, cfg = _timm_cfg(model, arch, weights)
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        found = next((f for f in (try_to_load_from_cache(cfg.hf_hub_id, n) for n in names) if isinstance(f, str)), None)
        folder = Path(constants.HF_HUB_CACHE) / f"models--{cfg.hf_hub_id.replace('/', '--')}"
        hint = f"huggingface-cli download {cfg.hf_hub_id} {names[0]} puts it there"
        expected = names[0]
    else:
        found = str(_hub_file(cfg.url)) if cfg.url and _hub_file(cfg.url).is_file() else None
        folder, expected = _hub_file(cfg.url or "x").parent, os.path.basename(urlparse(cfg.url or "").path)
        hint = "the torch hub cache, $TORCH_HOME/hub/checkpoints"
    if found is None and not download:
        raise _offline(f"{full} (timm)", expected, folder, hint)
    overlay = {"pretrained_cfg_overlay": {"file": found}} if found else {}
    net = timm.create_model(full, pretrained=True, **overlay)
    return net.state_dict(), found or full


def _pretrained_state(model: str, source: tuple[str, str] | None, weights: str,
                      download: bool) -> tuple[dict[str, torch.Tensor], str]:
    if source is None:
        raise ConfigError(
            f"model {model!r} has no named pretrained weights (got {weights!r}); expected a file or a run directory, "
            "or a torchvision / timm network (convattn list models)"
        )
    kind, arch = source
    if kind == "timm":
        return _timm_state(model, arch, weights, download)
    w = _torchvision_weights(model, arch, weights)
    file = _hub_file(w.url)
    if not file.is_file() and not download:
        raise _offline(f"{arch} {w.name} (torchvision)", file.name, file.parent, "the torch hub cache, $TORCH_HOME/hub/checkpoints")
    try:
        return w.get_state_dict(progress=False, check_hash=True, weights_only=True), str(file)
    except Exception as exc:  # a corrupt or foreign file in the cache
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"pretrained weights {str(file)!r} cannot be read ({first[:200]})") from None


def load_weights(
    model: nn.Module, name: str, weights: str | os.PathLike | Mapping[str, torch.Tensor], *, download: bool = False,
    label: str | None = None, pretrained: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Load pretrained ``weights`` into ``model`` (built as registered model ``name``), in place; ``label``
    names tensors given as a mapping in messages (their file or run); ``pretrained`` is the network's
    source of named weights (``get_model_info(name).pretrained``), needed for a name like ``DEFAULT``.

    Every tensor of the model must be found in the weights with its shape, except the classifier's
    (new when the number of classes differs) and the inserted attention layers'.

    Returns:
        ``{"weights", "file", "head", "loaded", "new", "skipped", "unused"}`` (see :func:`match_state`).

    Raises:
        ConfigError: an unknown weight name, weights missing from the cache (offline), a file that is not a
            checkpoint, weights of another network (tensors outside the head missing or of another shape).
    """
    if isinstance(weights, Mapping):
        state, file, label = dict(weights), None, label or "state dict"
    elif is_weights_file(weights):
        state, file, label = read_state_dict(weights), str(weights), str(weights)
    else:
        state, file = _pretrained_state(name, pretrained, str(weights), download)
        label = str(weights)
    mapped, report = match_state(model, state)
    head = classifier_path(model)
    free = [head, *_inserted_paths(model)]
    bad = [s for s in report["skipped"] if not _under(s.split(":")[0], free)]
    missing = [k for k in report["new"] if not _under(k, free)]
    if bad or missing:
        detail = "; ".join(bad[:3]) if bad else f"missing {', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}"
        raise ConfigError(
            f"weights {label!r} do not fit model {name!r} outside its classifier {head!r}: {detail} "
            f"({len(bad) + len(missing)} tensors; --init-from loads what fits)"
        )
    load_state(model, mapped)
    _log.info("weights %s: loaded %d tensors, %d new", label, len(report["loaded"]), len(report["new"]))
    return {"weights": label, "file": file, "head": head, **report}


def weights_preprocessing(name: str, weights: str | None, pretrained: tuple[str, str] | None) -> dict[str, Any]:
    """The input pipeline named ``weights`` of model ``name`` (whose named weights come from ``pretrained``,
    ``get_model_info(name).pretrained``) were trained with: ``{crop, resize, mean, std, interpolation}``
    (torchvision's ``weights.transforms()``, timm's ``resolve_data_config``); ``{}`` for files."""
    if not weights or is_weights_file(weights) or pretrained is None:
        return {}
    kind, arch = pretrained
    if kind == "timm":
        from timm.data import resolve_data_config

        _, cfg = _timm_cfg(name, arch, weights)
        data = resolve_data_config(pretrained_cfg=cfg.to_dict())
        crop = int(data["input_size"][-1])
        return {"crop": crop, "resize": int(math.floor(crop / data["crop_pct"])), "mean": [float(v) for v in data["mean"]],
                "std": [float(v) for v in data["std"]], "interpolation": str(data["interpolation"])}
    t = _torchvision_weights(name, arch, weights).transforms()
    return {"crop": int(t.crop_size[0]), "resize": int(t.resize_size[0]), "mean": [float(v) for v in t.mean],
            "std": [float(v) for v in t.std], "interpolation": str(t.interpolation.value)}
