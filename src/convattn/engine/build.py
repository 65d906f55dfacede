"""A run's model: built from its config (``build_model``), from a checkpoint (``model_from_checkpoint``,
``load_run``), or initialised from a finished run's weights (``init_from_run``)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from .._io import atomic_write_text
from ..exceptions import CheckpointError, ConfigError
from .checkpoint import load_checkpoint, resolve_checkpoint
from .config import TrainConfig
from .plugins import use_modules

__all__ = ["build_model", "model_from_checkpoint", "load_run", "init_from_run", "write_init_report", "key_summary"]


def build_model(config: TrainConfig, data_info: dict[str, Any]) -> nn.Module:
    """The model of ``config`` for a dataset described by ``data_info`` (``convattn.models.create_model``).

    ``placement`` applies to models whose registry entry ``places_attention``; models that
    take ``image_size`` (``gated_mlp``) get the dataset's unless ``model_kwargs`` sets it.
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


def init_from_run(model: nn.Module, source: str | os.PathLike) -> dict[str, Any]:
    """Copy the weights of a finished run into ``model``, whose parameters must be a superset of the run's.

    Models whose names differ from their backbone's (``aacn``) translate the run's
    keys with ``model.adapt_state_dict(state)``. Every tensor of the run must find a
    tensor of the same name and shape; the model's other tensors keep their
    initialisation.

    Args:
        model: the model to initialise (in place).
        source: a run directory (its ``best.pt``, else ``last.pt``) or a ``.pt`` file.

    Returns:
        ``{"source", "checkpoint", "epochs", "loaded": [keys], "new": [keys]}``.

    Raises:
        ConfigError: a run tensor the model lacks or holds with another shape.
        CheckpointError: a missing or unreadable checkpoint.
    """
    path = resolve_checkpoint(source)
    ckpt = load_checkpoint(path, map_location="cpu")
    state = dict(ckpt["model"])
    adapt = getattr(model, "adapt_state_dict", None)
    if callable(adapt):
        state = adapt(state)
    own = model.state_dict()
    missing = [k for k in state if k not in own]
    if missing:
        raise ConfigError(
            f"init_from {str(source)!r}: the model lacks {len(missing)} of the run's tensors "
            f"({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''}); its parameters must be a superset "
            f"of the run's (run model: {ckpt.get('config', {}).get('model')!r})"
        )
    wrong = [f"{k}: {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise ConfigError(f"init_from {str(source)!r}: tensors of another shape (run vs model): {'; '.join(wrong[:3])}")
    model.load_state_dict(state, strict=False)
    return {
        "source": str(source),
        "checkpoint": str(path),
        "epochs": int(ckpt.get("epoch", 0)),
        "loaded": sorted(state),
        "new": sorted(k for k in own if k not in state),
    }


def write_init_report(report: dict[str, Any], run_dir: Path) -> None:
    """Write :func:`init_from_run`'s report to ``run_dir/init_from.json`` and say in one line what was loaded."""
    atomic_write_text(run_dir / "init_from.json", json.dumps(report, indent=2) + "\n")
    print(
        f"init_from {report['checkpoint']} ({report['epochs']} epochs): loaded {len(report['loaded'])} tensors, "
        f"{len(report['new'])} new: {key_summary(report['new'])} (list in {run_dir / 'init_from.json'})",
        file=sys.stderr, flush=True,
    )


def key_summary(keys: list[str], limit: int = 4) -> str:
    """``a.*, b.*`` for the top-level modules of ``keys`` (at most ``limit``), e.g. the tensors
    :func:`init_from_run` left at their initialisation."""
    heads = list(dict.fromkeys(k.split(".")[0] for k in keys))
    if not heads:
        return "none"
    return ", ".join(h + ".*" for h in heads[:limit]) + (", ..." if len(heads) > limit else "")
