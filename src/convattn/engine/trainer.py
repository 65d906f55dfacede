"""The training loop: ``train(config)``, ``evaluate``, ``load_run``.

One loop covers plain training, staged schedules for multi-branch models (train
some parameter groups, freeze the rest, optionally alternating until the
validation loss stops improving), mixed precision, ``channels_last``,
``torch.compile`` and DistributedDataParallel under ``torchrun``.

Runs are reproducible and resumable: the seed fixes model initialisation, each
epoch's data order (a permutation of ``(seed, epoch)``), augmentation and dropout;
``last.pt`` holds every random state, and ``train(config, resume=run_dir)``
continues a run, also from the middle of an epoch, to the same final weights.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..exceptions import CheckpointError, ConfigError
from . import distributed as D
from .checkpoint import get_rng_state, load_checkpoint, resolve_checkpoint, save_checkpoint, set_rng_state
from .._io import atomic_write_text
from .config import TrainConfig
from .data import (
    build_datasets,
    epoch_seed,
    make_eval_loader,
    make_train_loader,
    seed_everything,
)
from .memory import keep_freed_memory
from .optim import WarmupSchedule, build_optimizer

__all__ = [
    "train",
    "evaluate",
    "load_run",
    "build_model",
    "model_from_checkpoint",
    "logits_of",
    "StagePlan",
    "METRIC_COLUMNS",
    "init_from_run",
]

METRIC_COLUMNS = [
    "epoch", "stage", "step", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_time", "images_per_s",
]


# ------------------------------------------------------------------- models
def build_model(config: TrainConfig, data_info: dict[str, Any]) -> nn.Module:
    """The model of ``config`` for a dataset described by ``data_info`` (``convattn.models.create_model``).

    Models whose factory takes ``image_size`` (``gated_mlp``) get the dataset's unless
    ``model_kwargs`` sets it.
    """
    import inspect

    from ..models import create_model
    from ..models._registry import get_model_entry

    kwargs = dict(config.model_kwargs)
    params = inspect.signature(get_model_entry(config.model)).parameters
    if config.placement is not None and "attn_where" not in params:
        raise ConfigError(
            f"placement applies to networks that insert_attn places layers in (convattn list models: the "
            f"torchvision / timm networks, resnet*), got placement={config.placement!r} for {config.model!r}, "
            "which places its attention itself"
        )
    if "image_size" in params and data_info.get("image_size"):
        kwargs.setdefault("image_size", tuple(int(s) for s in data_info["image_size"]))
    return create_model(
        config.model,
        num_classes=int(data_info["num_classes"]),
        in_chans=int(data_info["in_chans"]),
        attention=config.attention,
        attn_kwargs=dict(config.attn_kwargs) or None,
        **kwargs,
    )


def logits_of(outputs: Any) -> torch.Tensor:
    """Classification logits of a model's output: the tensor, or ``outputs["logits"]`` (else ``["out"]``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, dict):
        for key in ("logits", "out"):
            if key in outputs:
                return outputs[key]
        raise ConfigError(f"the model returned a dict without 'logits' (keys: {sorted(outputs)})")
    if isinstance(outputs, (tuple, list)) and outputs and isinstance(outputs[0], torch.Tensor):
        return outputs[0]
    raise ConfigError(f"the model returned {type(outputs).__name__}; expected logits or a dict with 'logits'")


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


# --------------------------------------------------------------- evaluation
@torch.no_grad()
def _eval_sums(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    num_classes: int | None = None,
    autocast: Any = None,
    channels_last: bool = False,
) -> tuple[float, torch.Tensor]:
    """Summed cross-entropy and the confusion matrix (rows: true class, cols: prediction)."""
    loss_sum = 0.0
    confusion = None if num_classes is None else torch.zeros(num_classes, num_classes, dtype=torch.int64)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(y).to(device, non_blocking=True)
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = logits_of(model(x))
        logits = logits.float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        if confusion is None:
            confusion = torch.zeros(logits.shape[1], logits.shape[1], dtype=torch.int64)
        pred = logits.argmax(1)
        k = confusion.shape[0]
        confusion += torch.bincount((y * k + pred).cpu(), minlength=k * k).view(k, k)
    if confusion is None:
        confusion = torch.zeros(num_classes or 0, num_classes or 0, dtype=torch.int64)
    return loss_sum, confusion


def _summary(loss_sum: float, confusion: torch.Tensor) -> dict[str, Any]:
    count = int(confusion.sum())
    correct = int(confusion.diag().sum())
    per_class_total = confusion.sum(1)
    per_class = [
        (float(confusion[i, i]) / float(per_class_total[i])) if per_class_total[i] > 0 else float("nan")
        for i in range(confusion.shape[0])
    ]
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion,
        "count": count,
    }


def evaluate(model: nn.Module, loader: Any, device: str | torch.device = "cpu") -> dict[str, Any]:
    """Evaluate a classifier.

    Args:
        model: returns logits, or a dict with ``"logits"``.
        loader: yields ``(images, labels)``.
        device: where to run.

    Returns:
        ``{"loss", "accuracy", "per_class_accuracy" (list; NaN for absent classes),
        "confusion_matrix" (int64 tensor, rows = true class), "count"}``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> data = [(torch.randn(4, 3), torch.tensor([0, 1, 0, 1]))]
        >>> out = evaluate(nn.Linear(3, 2), data)
        >>> out["confusion_matrix"].shape, out["count"]
        (torch.Size([2, 2]), 4)
    """
    device = torch.device(device)
    was_training = model.training
    model.eval()
    try:
        loss_sum, confusion = _eval_sums(model, loader, device)
    finally:
        model.train(was_training)
    return _summary(loss_sum, confusion)


# ------------------------------------------------------------------- stages
class StagePlan:
    """Which stage runs at each epoch; plain-data state so it checkpoints.

    ``sequential``: each stage once, in order. ``alternate``: cycle through the
    stages (those with ``once: true``, which come first, only in the first cycle);
    after each completed stage, a validation loss lower than the best so far resets a
    counter, otherwise it grows; stop when it reaches ``patience`` or when
    ``max_epochs`` epochs have run.
    """

    def __init__(self, stages: list[dict], *, mode: str = "sequential", patience: int = 2, max_epochs: int | None = None):
        self.stages = stages
        self.mode = mode
        self.patience = patience
        self.max_epochs = max_epochs
        self.index = 0  # position in self.stages
        self.epoch_in_stage = 0
        self.run_id = 0  # increments each time a stage (re)starts
        self.epochs_done = 0
        self.best_loss = math.inf
        self.bad = 0
        self.done = False

    @property
    def current(self) -> dict:
        return self.stages[self.index]

    def end_epoch(self, val_loss: float) -> None:
        self.epochs_done += 1
        self.epoch_in_stage += 1
        if self.epoch_in_stage < int(self.current["epochs"]):
            if self.max_epochs is not None and self.mode == "alternate" and self.epochs_done >= self.max_epochs:
                self.done = True
            return
        # the stage is complete
        self.epoch_in_stage = 0
        self.run_id += 1
        if self.mode == "sequential":
            self.index += 1
            self.done = self.index >= len(self.stages)
            return
        if val_loss < self.best_loss:
            self.best_loss, self.bad = val_loss, 0
        else:
            self.bad += 1
        self.index += 1
        if self.index == len(self.stages):  # a new cycle skips the stages that run once
            self.index = next(i for i, s in enumerate(self.stages) if not s.get("once", False))
        self.done = self.bad >= self.patience or (self.max_epochs is not None and self.epochs_done >= self.max_epochs)

    def state_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("index", "epoch_in_stage", "run_id", "epochs_done", "best_loss", "bad", "done")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, v in state.items():
            setattr(self, k, v)


# ---------------------------------------------------------------- init_from
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


def _key_summary(keys: list[str], limit: int = 4) -> str:
    """``a.*, b.*`` for the top-level modules of ``keys`` (at most ``limit``)."""
    heads = list(dict.fromkeys(k.split(".")[0] for k in keys))
    if not heads:
        return "none"
    return ", ".join(h + ".*" for h in heads[:limit]) + (", ..." if len(heads) > limit else "")


# ------------------------------------------------------------------ helpers
def _progress_enabled(config: TrainConfig, ctx: D.DistContext) -> bool:
    if not config.progress or not ctx.is_main or os.environ.get("CI"):
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def _default_run_dir(config: TrainConfig) -> Path:
    def slug(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9_.]+", "_", s).strip("_") or "x"

    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{slug(config.model)}-{slug(config.attention or 'none')}-{slug(config.dataset)}-{stamp}"


def _resume_file(path: str | os.PathLike) -> Path:
    p = Path(path)
    if p.is_dir():
        if (p / "last.pt").is_file():
            return p / "last.pt"
        raise CheckpointError(f"cannot resume: {str(p)!r} holds no last.pt")
    return resolve_checkpoint(p)


# Fields that may differ between a run and its resumption (they do not change the numbers).
RESUME_FREE_FIELDS = frozenset(
    {"out", "progress", "tensorboard", "workers", "device", "data_dir", "download", "save_every", "compile"}
)


def _check_resume_config(config: TrainConfig, saved: dict[str, Any]) -> None:
    current = config.to_dict()
    changed = sorted(
        k for k in current if k not in RESUME_FREE_FIELDS and k in saved and current[k] != saved[k]
    )
    if changed:
        detail = ", ".join(f"{k}: {saved[k]!r} -> {current[k]!r}" for k in changed[:6])
        raise ConfigError(
            f"cannot resume with a different configuration ({detail}); only "
            f"{', '.join(sorted(RESUME_FREE_FIELDS))} may change when resuming"
        )


def _finished_results(config: TrainConfig, resume: str | os.PathLike) -> dict[str, Any] | None:
    """The saved results of a finished run (left untouched), or ``None`` when the run has epochs to go.

    A finished run cannot be extended with other settings (more epochs change its
    schedule); the error points to ``init_from``, which starts a new run from its weights.
    """
    path = _resume_file(resume)
    ckpt = load_checkpoint(path, map_location="cpu")
    if not (ckpt.get("plan") or {}).get("done"):
        return None
    saved = ckpt.get("config") or {}
    try:
        _check_resume_config(config, saved)
    except ConfigError as exc:
        raise ConfigError(
            f"run {str(path.parent)!r} is finished ({ckpt.get('epoch')} epochs) and {exc}; to train on from its "
            f"weights, start a new run with --init-from {path.parent}"
        ) from None
    results = path.parent / "results.json"
    try:
        res = json.loads(results.read_text())
    except (OSError, ValueError):
        return None  # finished training but no valid results.json: the test evaluation runs again
    print(f"run {str(path.parent)!r} is already finished ({ckpt.get('epoch')} epochs); nothing to do, "
          "its files are unchanged", file=sys.stderr, flush=True)
    return res


def _json_safe(value: Any) -> Any:
    """NaN / inf as ``null``, so results.json stays valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


class _MetricsWriter:
    """Per-epoch rows appended to metrics.jsonl and metrics.csv (and TensorBoard when installed)."""

    def __init__(self, run_dir: Path, *, keep_before_epoch: int | None, tensorboard: bool):
        self.jsonl = run_dir / "metrics.jsonl"
        self.csv = run_dir / "metrics.csv"
        if keep_before_epoch is not None:  # resuming: drop rows of epochs that will be re-run
            rows = []
            if self.jsonl.is_file():
                for line in self.jsonl.read_text().splitlines():
                    try:
                        row = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if int(row.get("epoch", 0)) <= keep_before_epoch:
                        rows.append(row)
            atomic_write_text(self.jsonl, "".join(json.dumps(r) + "\n" for r in rows))
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=METRIC_COLUMNS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)
            atomic_write_text(self.csv, buf.getvalue())
        else:
            atomic_write_text(self.jsonl, "")
            atomic_write_text(self.csv, ",".join(METRIC_COLUMNS) + "\n")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(log_dir=str(run_dir / "tb"))
            except Exception:  # tensorboard is optional
                self.tb = None

    def write(self, row: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with open(self.csv, "a", newline="") as fh:
            csv.DictWriter(fh, fieldnames=METRIC_COLUMNS, extrasaction="ignore").writerow(row)
            fh.flush()
            os.fsync(fh.fileno())
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("epoch", "step"):
                    self.tb.add_scalar(k, v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _autocast_factory(mode: str, device: torch.device):
    if mode == "off":
        return None, False
    if device.type == "cpu":
        if mode == "fp16":
            raise ConfigError("amp 'fp16' needs CUDA; on CPU use amp 'bf16' (or 'auto')")
        dtype = torch.bfloat16
    else:
        if mode == "auto":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        else:
            dtype = torch.float16 if mode == "fp16" else torch.bfloat16
    use_scaler = dtype == torch.float16

    def factory():
        return torch.autocast(device_type=device.type, dtype=dtype)

    return factory, use_scaler


# ------------------------------------------------------------------- trainer
class _Trainer:
    def __init__(self, config: TrainConfig, ctx: D.DistContext, resume: str | os.PathLike | None):
        self.config = config
        self.ctx = ctx
        self.device = ctx.device
        self.ckpt = None
        if resume is not None:
            self.ckpt = load_checkpoint(_resume_file(resume), map_location="cpu")
            self.run_dir = _resume_file(resume).parent
            _check_resume_config(config, self.ckpt["config"])
        else:
            self.run_dir = Path(config.out) if config.out else _default_run_dir(config)
            if ctx.is_main and (self.run_dir / "last.pt").exists():
                raise ConfigError(
                    f"run directory {str(self.run_dir)!r} already holds a run; resume it with "
                    f"--resume {self.run_dir} or choose another --out"
                )
        if ctx.enabled:  # every rank uses rank 0's directory name
            holder = [str(self.run_dir)]
            torch.distributed.broadcast_object_list(holder, src=0)
            self.run_dir = Path(holder[0])

        seed_everything(config.seed)
        datasets, self.data_info = build_datasets(config)
        self.model = build_model(config, self.data_info).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.groups = self._param_groups()
        self.init_report = None
        if config.init_from and self.ckpt is None:
            self.init_report = init_from_run(self.model, config.init_from)
        # data/dropout randomness differs per rank; model init above does not
        seed_everything(config.seed + ctx.rank)

        pin = self.device.type == "cuda"
        self.train_loader, self.sampler, self.generator = make_train_loader(
            datasets["train"], config, rank=ctx.rank, world_size=ctx.world_size, pin_memory=pin
        )
        self.val_loader = make_eval_loader(datasets["val"], config, rank=ctx.rank, world_size=ctx.world_size, pin_memory=pin)
        self.test_loader = make_eval_loader(datasets["test"], config, rank=ctx.rank, world_size=ctx.world_size, pin_memory=pin)
        n = self.sampler.num_samples
        self.steps_per_epoch = n // config.batch_size if self.train_loader.drop_last else math.ceil(n / config.batch_size)

        self.autocast, use_scaler = _autocast_factory(config.amp, self.device)
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler and self.device.type == "cuda")

        stages = config.stages or [
            {"name": "train", "epochs": config.epochs, "train": None, "lr": config.lr, "alpha": config.alpha}
        ]
        self.plan = StagePlan(
            [dict(s) for s in stages], mode=config.stage_mode if config.stages else "sequential",
            patience=config.patience, max_epochs=config.epochs if config.stages else None,
        )
        for s in self.plan.stages:
            self._check_groups(s)
        unknown = sorted(set(config.lr_mult) - set(self.groups))
        if unknown:
            raise ConfigError(
                f"lr_mult names parameter group(s) {unknown}, but model {config.model!r} has "
                + (f"{sorted(self.groups)}" if self.groups else "no param_groups()")
            )
        self.epoch = 0
        self.step = 0
        self.batch_in_epoch = 0
        self.partial = [0.0, 0.0, 0.0]  # loss sum, correct, count of the current epoch
        self.best_val_acc = -1.0
        self.opt_run_id = -1
        self.optimizer = None
        self.scheduler = None
        if self.ckpt is not None:
            self._restore()

    # ----------------------------------------------------------- parameters
    def _param_groups(self) -> dict[str, list[nn.Parameter]]:
        fn = getattr(self.model, "param_groups", None)
        return dict(fn()) if callable(fn) else {}

    def _check_groups(self, stage: dict) -> None:
        train = stage.get("train")
        if train is None:
            return
        if not self.groups:
            raise ConfigError(
                f"stage {stage['name']!r} trains groups {train}, but model {self.config.model!r} has no param_groups()"
            )
        unknown = [g for g in train if g not in self.groups]
        if unknown:
            raise ConfigError(
                f"stage {stage['name']!r}: unknown parameter group(s) {unknown}; model {self.config.model!r} has {sorted(self.groups)}"
            )

    def _configure_stage(self) -> None:
        stage = self.plan.current
        train = stage.get("train")
        if train is None:
            for p in self.model.parameters():
                p.requires_grad_(True)
        else:
            keep = {id(p) for g in train for p in self.groups[g]}
            for p in self.model.parameters():
                p.requires_grad_(id(p) in keep)
        self.frozen_norms = [
            m for m in self.model.modules()
            if isinstance(m, _BatchNorm) and any(True for _ in m.parameters(recurse=False))
            and not any(p.requires_grad for p in m.parameters(recurse=False))
        ]
        named = [(n, p) for n, p in self.model.named_parameters() if p.requires_grad]
        lr = float(stage.get("lr") or self.config.lr)
        self.optimizer = build_optimizer(
            named, name=self.config.optimizer, lr=lr, momentum=self.config.momentum,
            nesterov=self.config.nesterov, weight_decay=self.config.weight_decay,
            lr_mult=self.config.lr_mult, groups=self.groups,
        )
        warmup = round(self.config.warmup_epochs * self.steps_per_epoch) if self.plan.run_id == 0 else 0
        self.scheduler = WarmupSchedule(
            self.optimizer,
            total_steps=int(stage["epochs"]) * self.steps_per_epoch,
            warmup_steps=warmup,
            schedule=self.config.schedule,
            min_lr_ratio=self.config.min_lr / lr,
            step_size=self.config.step_epochs * self.steps_per_epoch,
            gamma=self.config.step_gamma,
        )
        self.alpha = float(stage.get("alpha") if stage.get("alpha") is not None else self.config.alpha)
        self.opt_run_id = self.plan.run_id
        fwd: nn.Module = self.model
        if self.ctx.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            fwd = DDP(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.config.compile:
            fwd = torch.compile(fwd)
        self.fwd = fwd

    def _stage_groups(self) -> tuple[list[str], list[str]]:
        """Parameter groups the current stage trains and freezes (``["all"]``, ``[]`` without groups)."""
        train = self.plan.current.get("train")
        if train is None:
            return (["all"] if not self.groups else sorted(self.groups)), []
        return list(train), sorted(g for g in self.groups if g not in train)

    def _stage_summary(self) -> list[dict[str, Any]]:
        """Consecutive epochs of one stage, from metrics.jsonl: ``[{name, epochs, first_epoch, train, frozen}]``."""
        path = self.run_dir / "metrics.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
        runs: list[dict[str, Any]] = []
        for row in rows:
            if runs and runs[-1]["name"] == row.get("stage") and runs[-1]["train"] == row.get("train_groups"):
                runs[-1]["epochs"] += 1
                continue
            runs.append({"name": row.get("stage"), "epochs": 1, "first_epoch": row.get("epoch"),
                         "train": row.get("train_groups"), "frozen": row.get("frozen_groups")})
        return runs

    # ------------------------------------------------------------ checkpoints
    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's random states (a collective: call it on all ranks)."""
        if not self.ctx.enabled:
            return [get_rng_state()]
        states: list[Any] = [None] * self.ctx.world_size
        torch.distributed.all_gather_object(states, get_rng_state())
        return states

    def _state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "rng": rng[0],
            "rng_ranks": rng,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "step": self.step,
            "partial": list(self.partial),
            "best_val_acc": self.best_val_acc,
            "plan": self.plan.state_dict(),
            "opt_run_id": self.opt_run_id,
            "config": self.config.to_dict(),
            "data_info": self.data_info,
            "world_size": self.ctx.world_size,
            "torch_version": str(torch.__version__),
        }

    def _save(self, name: str) -> None:
        rng = self._rng_states()
        if self.ctx.is_main:
            save_checkpoint(self._state(rng), self.run_dir / name)

    def _restore(self) -> None:
        c = self.ckpt
        try:
            self.model.load_state_dict(c["model"])
            self.epoch = int(c["epoch"])
            self.batch_in_epoch = int(c["batch_in_epoch"])
            self.step = int(c["step"])
            self.partial = [float(v) for v in c["partial"]]
            self.best_val_acc = float(c["best_val_acc"])
            self.plan.load_state_dict(c["plan"])
            if c["opt_run_id"] == self.plan.run_id and not self.plan.done:
                self._configure_stage()
                self.optimizer.load_state_dict(c["optimizer"])
                self.scheduler.load_state_dict(c["scheduler"])
                if c.get("scaler") and self.scaler.is_enabled():
                    self.scaler.load_state_dict(c["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"cannot resume from this checkpoint: {str(exc).splitlines()[0]}") from None
        if c.get("world_size", 1) == self.ctx.world_size:
            ranks = c.get("rng_ranks") or [c["rng"]]
            set_rng_state(ranks[self.ctx.rank] if self.ctx.rank < len(ranks) else c["rng"])

    # ------------------------------------------------------------------ loop
    def _set_train_mode(self) -> None:
        self.model.train()
        for m in self.frozen_norms:
            m.eval()

    def _train_epoch(self) -> dict[str, float]:
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batch_in_epoch * cfg.batch_size)
        self.generator.manual_seed(epoch_seed(cfg.seed, self.epoch, self.ctx.rank))
        self._set_train_mode()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        has_reg = callable(getattr(self.model, "regularization", None))
        remaining = self.steps_per_epoch - self.batch_in_epoch
        bar = None
        if _progress_enabled(cfg, self.ctx):
            from tqdm.auto import tqdm

            bar = tqdm(
                total=self.steps_per_epoch, initial=self.batch_in_epoch, leave=False, dynamic_ncols=True,
                desc=f"epoch {self.epoch + 1}/{self._epochs_label()} [{self.plan.current['name']}]",
            )
        t0 = time.perf_counter()
        images = 0
        for i, (x, y) in enumerate(self.train_loader):
            if i >= remaining:
                break
            x = x.to(self.device, non_blocking=True)
            if cfg.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(self.device, non_blocking=True)
            with self.autocast() if self.autocast is not None else contextlib.nullcontext():
                outputs = self.fwd(x)
                logits = logits_of(outputs)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                if has_reg and self.alpha > 0:
                    loss = loss + self.alpha * self.model.regularization(outputs)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.clip_grad:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            with torch.no_grad():
                self.partial[0] += float(loss.detach()) * y.shape[0]
                self.partial[1] += float((logits.detach().argmax(1) == y).sum())
                self.partial[2] += y.shape[0]
            self.step += 1
            self.batch_in_epoch += 1
            images += y.shape[0]
            if bar is not None:
                rate = images * self.ctx.world_size / max(time.perf_counter() - t0, 1e-9)
                bar.set_postfix(loss=f"{self.partial[0] / self.partial[2]:.4f}",
                                acc=f"{self.partial[1] / self.partial[2]:.3f}", img_s=f"{rate:.0f}")
                bar.update(1)
            if cfg.save_every and self.step % cfg.save_every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                self._save("last.pt")
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        loss_sum, correct, count = D.all_reduce_sum(self.ctx, self.partial, self.device)
        return {
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "epoch_time": elapsed,
            "images_per_s": images * self.ctx.world_size / max(elapsed, 1e-9),
        }

    def _epochs_label(self) -> str:
        return str(self.config.total_epochs) if self.plan.mode == "sequential" else f"<={self.config.epochs}"

    def _evaluate(self, loader: Any) -> dict[str, Any]:
        self.model.eval()
        loss_sum, confusion = _eval_sums(
            self.model, loader, self.device, num_classes=self.data_info["num_classes"],
            autocast=self.autocast, channels_last=self.config.channels_last,
        )
        if self.ctx.enabled:
            t = torch.cat([torch.tensor([loss_sum], dtype=torch.float64), confusion.double().flatten()]).to(self.device)
            torch.distributed.all_reduce(t)
            t = t.cpu()
            loss_sum = float(t[0])
            confusion = t[1:].round().long().view_as(confusion)
        return _summary(loss_sum, confusion)

    def run(self) -> dict[str, Any]:
        cfg = self.config
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / "config.yaml")
            metrics = _MetricsWriter(
                self.run_dir, keep_before_epoch=self.epoch if self.ckpt is not None else None,
                tensorboard=cfg.tensorboard,
            )
            if self.init_report is not None:
                rep = self.init_report
                atomic_write_text(self.run_dir / "init_from.json", json.dumps(rep, indent=2) + "\n")
                print(
                    f"init_from {rep['checkpoint']} ({rep['epochs']} epochs): loaded {len(rep['loaded'])} tensors, "
                    f"{len(rep['new'])} new: {_key_summary(rep['new'])} (list in {self.run_dir / 'init_from.json'})",
                    file=sys.stderr, flush=True,
                )
        self.ckpt = None  # free memory
        epoch_times: list[float] = []
        last: dict[str, Any] = {}
        previous = self.run_dir / "metrics.jsonl"
        if self.epoch > 0 and previous.is_file():  # resumed: the epochs already run count
            for line in previous.read_text().splitlines():
                try:
                    last = json.loads(line)
                except ValueError:
                    continue
                epoch_times.append(float(last.get("epoch_time", math.nan)))
        try:
            while not self.plan.done:
                if self.opt_run_id != self.plan.run_id:
                    self._configure_stage()
                stage_name = self.plan.current["name"]
                trained, frozen = self._stage_groups()
                tr = self._train_epoch()
                D.broadcast_buffers(self.ctx, self.model)  # BatchNorm statistics of rank 0 everywhere
                val = self._evaluate(self.val_loader)
                lr = self.optimizer.param_groups[0]["lr"]
                self.plan.end_epoch(val["loss"])
                self.epoch += 1
                self.batch_in_epoch = 0
                self.partial = [0.0, 0.0, 0.0]
                row = {
                    "epoch": self.epoch, "stage": stage_name, "step": self.step, **{k: tr[k] for k in ("train_loss", "train_acc")},
                    "val_loss": val["loss"], "val_acc": val["accuracy"], "lr": lr,
                    "epoch_time": tr["epoch_time"], "images_per_s": tr["images_per_s"],
                    "train_groups": trained, "frozen_groups": frozen, "alpha": self.alpha,
                }
                epoch_times.append(tr["epoch_time"])
                last = row
                improved = val["accuracy"] > self.best_val_acc
                if improved:
                    self.best_val_acc = val["accuracy"]
                rng = self._rng_states()
                if self.ctx.is_main:
                    metrics.write(row)
                    state = self._state(rng)
                    if improved:
                        save_checkpoint(state, self.run_dir / "best.pt")
                    save_checkpoint(state, self.run_dir / "last.pt")
                    print(
                        f"epoch {self.epoch} [{stage_name}] train_loss {row['train_loss']:.4f} "
                        f"train_acc {row['train_acc']:.4f} val_loss {row['val_loss']:.4f} "
                        f"val_acc {row['val_acc']:.4f} lr {lr:.3g} {row['epoch_time']:.1f}s "
                        f"{row['images_per_s']:.0f} img/s",
                        file=sys.stderr, flush=True,
                    )
            test = self._evaluate(self.test_loader)
        finally:
            if self.ctx.is_main:
                metrics.close()
        result = {
            "run_dir": str(self.run_dir),
            "params": int(self.num_params),
            "epochs": self.epoch,
            "steps": self.step,
            "epoch_time": sum(epoch_times) / len(epoch_times) if epoch_times else float("nan"),
            "train_loss": last.get("train_loss", float("nan")),
            "train_acc": last.get("train_acc", float("nan")),
            "val_loss": last.get("val_loss", float("nan")),
            "val_acc": last.get("val_acc", float("nan")),
            "best_val_acc": self.best_val_acc,
            "test_loss": test["loss"],
            "test_acc": test["accuracy"],
            "images_per_s": last.get("images_per_s", float("nan")),
        }
        if self.config.stages:
            result["stages"] = self._stage_summary()
        if self.init_report is not None:
            result["init_from"] = {k: self.init_report[k] for k in ("checkpoint", "epochs")}
        if self.ctx.is_main:
            atomic_write_text(self.run_dir / "results.json", json.dumps(_json_safe(result), indent=2) + "\n")
        return result


def train(config: TrainConfig, *, resume: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train ``config.model`` on ``config.dataset``; write a run directory; return final metrics.

    The run directory (``config.out``, default ``runs/<model>-<attention>-<dataset>-<time>``)
    receives ``config.yaml``, ``metrics.jsonl``, ``metrics.csv``, ``last.pt`` (every
    epoch, and every ``save_every`` steps), ``best.pt`` (best validation accuracy) and
    ``results.json``. Under ``torchrun`` the run is DistributedDataParallel and only
    rank 0 writes.

    Args:
        config: the run's configuration.
        resume: a run directory (its ``last.pt``) or checkpoint to continue from,
            exactly where it stopped (also mid-epoch). ``config`` may extend the run
            (e.g. more ``epochs``).

    Returns:
        ``{"run_dir", "params", "epochs", "steps", "epoch_time" (mean seconds),
        "train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc",
        "test_loss", "test_acc", "images_per_s"}``.

    Raises:
        ConfigError: invalid values, unknown model / layer / parameter group, a run
            directory that already holds a run.
        DatasetNotFoundError: missing dataset files.
        CheckpointError: an unreadable or unsafe checkpoint to resume from.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train expects a TrainConfig, got {type(config).__name__}")
    config.validate()
    if resume is not None:
        finished = _finished_results(config, resume)
        if finished is not None:
            return finished
    ctx = D.setup(config.device)
    if ctx.device.type == "cpu":
        keep_freed_memory()
    try:
        return _Trainer(config, ctx, resume).run()
    finally:
        D.cleanup(ctx)
