"""A run's model: built from its config (``build_model``), from a checkpoint (``model_from_checkpoint``,
``load_run``), and initialised from pretrained weights or any checkpoint (``init_weights``, ``init_from_run``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write_text
from ..exceptions import CheckpointError, ConfigError
from .checkpoint import checksum_path, load_checkpoint, resolve_checkpoint
from .config import TrainConfig
from .plugins import use_modules

__all__ = [
    "build_model", "model_from_checkpoint", "load_run", "checkpoint_state", "init_from_run", "init_weights",
    "write_init_report", "key_summary",
]


def build_model(config: TrainConfig, data_info: dict[str, Any]) -> nn.Module:
    """The model of ``config`` for a dataset described by ``data_info`` (``convattn.models.create_model``).

    ``placement`` applies to models whose registry entry ``places_attention``; models that
    take ``image_size`` (``gated_mlp``) get the dataset's unless ``model_kwargs`` sets it. With
    ``weights`` set, ``identity_init`` defaults to true (the weights are loaded by :func:`init_weights`).
    A model or layer of your own: its module is imported and recorded in ``data_info["modules"]``
    (:func:`~convattn.engine.plugins.use_modules`).
    """
    from ..models import create_model, get_model_info

    use_modules(config, data_info)
    kwargs = dict(config.model_kwargs)
    info = get_model_info(config.model)
    if config.placement is not None and not info.places_attention:
        raise ConfigError(
            f"placement applies to networks that insert_attn places layers in (convattn list models: the "
            f"torchvision / timm networks, resnet*), got placement={config.placement!r} for {config.model!r}, "
            "which places its attention itself"
        )
    if info.takes_image_size and data_info.get("image_size"):
        kwargs.setdefault("image_size", tuple(int(s) for s in data_info["image_size"]))
    if config.weights and info.places_attention:  # attention starts as the identity on pretrained weights
        kwargs.setdefault("identity_init", True)
    return create_model(
        config.model,
        num_classes=int(data_info["num_classes"]),
        in_chans=int(data_info["in_chans"]),
        attention=config.attention,
        attn_kwargs=dict(config.attn_kwargs) or None,
        **kwargs,
    )


def model_from_checkpoint(ckpt: dict[str, Any]) -> tuple[nn.Module, TrainConfig]:
    """Rebuild the model of a loaded checkpoint and load its weights (eval mode)."""
    try:
        config = TrainConfig.from_dict(dict(ckpt["config"]), source="checkpoint config")
    except ConfigError as exc:
        raise CheckpointError(f"the checkpoint's config is invalid: {exc}") from None
    info = ckpt.get("data_info")
    if info is None:
        raise CheckpointError("the checkpoint has no data_info (number of classes, input channels)")
    model = build_model(config, info)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:
        raise CheckpointError(f"the checkpoint's weights do not fit model {config.model!r}: {str(exc).splitlines()[0]}") from None
    return model.eval(), config


def load_run(path: str | os.PathLike, map_location: Any = "cpu") -> tuple[nn.Module, TrainConfig]:
    """Load a trained model and its config.

    Args:
        path: a run directory (its ``best.pt``, else ``last.pt``) or a ``.pt`` file.
        map_location: where to put the weights.

    Returns:
        ``(model, config)``; the model is in eval mode. The dataset description
        (classes, mean / std, image size) is on ``model.data_info``.

    Raises:
        CheckpointError: missing, corrupt, or unsafe checkpoint.
    """
    ckpt = load_checkpoint(path, map_location=map_location)
    model, config = model_from_checkpoint(ckpt)
    model.data_info = dict(ckpt["data_info"])
    return model, config


def checkpoint_state(source: str | os.PathLike) -> tuple[dict[str, Any], dict[str, Any]]:
    """The state dict of any checkpoint and where it came from: a run directory or a convattn ``.pt``
    (:func:`~convattn.engine.checkpoint.load_checkpoint`, checksum checked), or any other state-dict file
    (:func:`convattn.models.weights.read_state_dict`: torchvision, timm, plain).

    Returns:
        ``(state, {"source", "checkpoint", "epochs", "model"})``; ``model`` is the run's model name or ``None``.
    """
    from ..models.weights import read_state_dict

    path = resolve_checkpoint(source)
    if path.is_dir() or checksum_path(path).is_file():
        ckpt = load_checkpoint(path, map_location="cpu")
        state, epochs, model = dict(ckpt["model"]), int(ckpt.get("epoch", 0)), ckpt.get("config", {}).get("model")
    else:
        state, epochs, model = read_state_dict(path), 0, None
    return state, {"source": str(source), "checkpoint": str(path), "epochs": epochs, "model": model}


def init_from_run(model: nn.Module, source: str | os.PathLike) -> dict[str, Any]:
    """Copy the tensors of any checkpoint that fit into ``model`` (in place).

    Keys are matched through the wrappers ``insert_attn`` adds (a plain run's ``bn2.weight`` into its
    attention variant's ``bn2.module.weight``); models whose names differ from their backbone's
    (``aacn``) translate the keys with ``model.adapt_state_dict(state)``. Tensors of another shape
    are skipped and listed, as are keys the model lacks; the model's other tensors keep their
    initialisation.

    Args:
        model: the model to initialise.
        source: a run directory (its ``best.pt``, else ``last.pt``), a convattn ``.pt``, or a plain /
            torchvision / timm state-dict file.

    Returns:
        ``{"source", "checkpoint", "epochs", "model", "loaded", "new", "skipped", "unused"}``.

    Raises:
        ConfigError: none of the checkpoint's tensors fits the model; a file that is not a checkpoint.
        CheckpointError: a missing, corrupt or unsafe convattn checkpoint.
    """
    from ..models.weights import load_state, match_state

    state, where = checkpoint_state(source)
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)
    mapped, report = match_state(model, state)
    if not mapped:
        raise ConfigError(
            f"init_from {str(source)!r}: none of the checkpoint's {len(state)} tensors fits the model "
            f"({type(model).__name__}); expected tensors of the same names and shapes, got "
            f"{', '.join(list(state)[:3])}{', ...' if len(state) > 3 else ''}"
            + (f" (run model: {where['model']!r})" if where["model"] else "")
        )
    load_state(model, mapped)
    return {**where, **report}


def weights_in_chans(weights: str | os.PathLike) -> int:
    """Input channels of the first convolution of ``weights``: 3 for torchvision and timm weight names;
    read from the file or run otherwise (a grayscale run's stem takes 1)."""
    from ..models.weights import is_weights_file

    if not (is_weights_file(weights) and Path(weights).expanduser().exists()):
        return 3
    state, _ = checkpoint_state(Path(weights).expanduser())
    stem = next((t for t in state.values() if getattr(t, "dim", lambda: 0)() == 4 and t.is_floating_point()), None)
    return 3 if stem is None else int(stem.shape[1])


def init_weights(model: nn.Module, config: TrainConfig) -> dict[str, Any] | None:
    """Initialise a new run's model from ``config.weights`` (:func:`convattn.models.load_weights`; a run
    directory or convattn ``.pt`` through :func:`checkpoint_state`), then ``config.init_from``
    (:func:`init_from_run`); ``None`` when neither is set.

    Returns:
        :func:`init_from_run`'s report (``"checkpoint"``: the file last loaded), with ``"weights"``:
        :func:`~convattn.models.load_weights`' report when ``weights`` is set.
    """
    from ..models import get_model_info
    from ..models.weights import is_weights_file, load_weights

    report: dict[str, Any] | None = None
    if config.weights:
        weights: Any = config.weights
        where = {"source": config.weights, "checkpoint": config.weights, "epochs": 0, "model": None}
        if is_weights_file(weights) and Path(weights).expanduser().exists():
            state, where = checkpoint_state(Path(weights).expanduser())
            weights = state
        loaded = load_weights(model, config.model, weights, download=config.download, label=str(config.weights),
                              pretrained=get_model_info(config.model).pretrained)
        loaded["weights"] = config.weights
        report = {**where, "checkpoint": loaded["file"] or where["checkpoint"], "weights": loaded}
    if config.init_from:
        report = {**init_from_run(model, config.init_from), **({"weights": report["weights"]} if report else {})}
    return report


def write_init_report(report: dict[str, Any], run_dir: Path) -> None:
    """Write :func:`init_weights`' report to ``run_dir/init_from.json`` and say in one line per source what
    was loaded."""
    atomic_write_text(run_dir / "init_from.json", json.dumps(report, indent=2) + "\n")
    lines = []
    if report.get("weights"):
        w = report["weights"]
        lines.append(f"weights {w['weights']}: loaded {len(w['loaded'])} tensors, {len(w['new'])} new: "
                     f"{key_summary(w['new'])} (head {w['head']!r})")
    if "loaded" in report:
        skipped = f", skipped {len(report['skipped'])} of another shape: {key_summary(report['skipped'])}" if report["skipped"] else ""
        lines.append(f"init_from {report['checkpoint']} ({report['epochs']} epochs): loaded {len(report['loaded'])} "
                     f"tensors, {len(report['new'])} new: {key_summary(report['new'])}{skipped}")
    for line in lines:
        print(f"{line} (list in {run_dir / 'init_from.json'})", file=sys.stderr, flush=True)


def key_summary(keys: list[str], limit: int = 4) -> str:
    """``a.*, b.*`` for the top-level modules of ``keys`` (at most ``limit``), e.g. the tensors
    :func:`init_from_run` left at their initialisation."""
    heads = list(dict.fromkeys(k.split(".")[0] for k in keys))
    if not heads:
        return "none"
    return ", ".join(h + ".*" for h in heads[:limit]) + (", ..." if len(heads) > limit else "")
