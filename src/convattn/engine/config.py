"""``TrainConfig``: everything a training run depends on, in one validated dataclass.

A config is built from defaults, a YAML file (``TrainConfig.from_yaml``) and
explicit overrides (``config.replace(lr=0.1)``, or command-line flags), then
validated. The resolved config is written next to the run as ``config.yaml`` and
stored inside every checkpoint as a plain dict, so a run can be rebuilt from either.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from .._io import atomic_write_text
from ..exceptions import ConfigError

__all__ = ["TrainConfig", "OPTIMIZERS", "SCHEDULES", "AMP_MODES", "DEVICES", "STAGE_MODES", "check_names"]

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
AMP_MODES = ("off", "auto", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")
STAGE_MODES = ("sequential", "alternate")
_STAGE_KEYS = {"name", "epochs", "train", "freeze", "lr", "alpha", "once"}
_PREPROCESSING_KEYS = {"crop", "resize", "mean", "std", "interpolation"}
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


def _f(default: Any, help: str, **kw: Any) -> Any:
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Configuration of one training run.

    Every field can be set in a YAML file (``--config run.yaml``) and overridden by
    the command-line flag of the same name (``--batch-size 64``); explicit flags win.

    Example:
        >>> cfg = TrainConfig(model="simple_cnn", attention="se", epochs=2, lr=0.05)
        >>> cfg.replace(optimizer="adamw").optimizer
        'adamw'
        >>> TrainConfig(lr=-1.0)
        Traceback (most recent call last):
        ...
        convattn.exceptions.ConfigError: TrainConfig.lr must be a finite number > 0, got -1.0
    """

    # what to train
    model: str = _f("simple_cnn", "model name (convattn list models)")
    attention: str | None = _f(None, "attention layer inserted into the model (convattn list layers); none for the plain model")
    attn_kwargs: dict = _f({}, "options of the attention layer, e.g. rd_ratio=0.25")
    placement: str | None = _f(None, "where insert_attn puts the attention: block, stage, conv or replace (swap the model's own SE); model default when unset")
    model_kwargs: dict = _f({}, "extra options of the model, e.g. dropout=0.1")
    recipe: str | None = _f(None, "named recipe whose values fill the fields not given (convattn train: the model's default; none for bare defaults)")
    init_from: str | None = _f(None, "run directory or checkpoint whose weights initialise the matching parameters (a plain run into its attention variant)")
    weights: str | None = _f(None, "pretrained weights: a torchvision weight name (DEFAULT, IMAGENET1K_V1) or timm tag of the model, a checkpoint file or a run directory; the classifier is new when the classes differ, attention starts as the identity")
    freeze: list = _f([], "parameter groups kept frozen for the whole run, BatchNorm statistics included (backbone, attention, head, or the model's param_groups())", words=True)
    preprocessing: dict = _f({}, "folder datasets' input pipeline: crop, resize, mean, std, interpolation (from --weights when unset; none: the dataset's own)")
    # data
    dataset: str = _f("cluttered-digits", "dataset name (convattn list datasets) or folder:PATH")
    data_dir: str | None = _f(None, "directory holding the dataset files")
    download: bool = _f(False, "download the dataset (torchvision datasets) and named pretrained weights if missing")
    train_size: int | None = _f(None, "use only this many training images")
    val_size: int | None = _f(None, "use only this many validation images")
    test_size: int | None = _f(None, "use only this many test images")
    distort: str | None = _f(None, "spatial distortion of grayscale datasets: rotate, rts, projective or elastic")
    augment: bool | None = _f(None, "training-time augmentation (dataset default when unset)")
    image_size: int | None = _f(None, "resize images to this size (dataset default when unset)")
    # optimisation
    epochs: int = _f(10, "number of epochs (the maximum in alternate stage mode)")
    batch_size: int = _f(64, "images per step on each process")
    lr: float = _f(0.05, "peak learning rate")
    lr_mult: dict = _f({}, "learning-rate multiplier per parameter group (backbone, attention, head, or the model's param_groups()), e.g. attention=10")
    optimizer: str = _f("sgd", "sgd or adamw")
    momentum: float = _f(0.9, "SGD momentum / AdamW beta1")
    nesterov: bool = _f(True, "Nesterov momentum (SGD)")
    weight_decay: float = _f(5e-4, "weight decay (never applied to norms, biases and gammas)")
    schedule: str = _f("cosine", "cosine, step or constant learning-rate schedule (per step)")
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs (fractions allowed)")
    min_lr: float = _f(0.0, "final learning rate of the cosine schedule")
    step_epochs: int = _f(30, "step schedule: decay every this many epochs")
    step_gamma: float = _f(0.1, "step schedule: multiply the lr by this at each decay")
    label_smoothing: float = _f(0.0, "label smoothing of the cross-entropy loss")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value")
    alpha: float = _f(0.0, "weight of model.regularization(outputs) in the loss (models that have one)")
    stages: list | None = _f(None, "staged schedule: list of {name, epochs, train: [groups], freeze: [groups], lr, alpha, once}")
    stage_mode: str = _f("sequential", "sequential: run stages once; alternate: cycle until val loss stops improving")
    patience: int = _f(2, "alternate mode: stop after this many stage cycles without a better val loss")
    # execution
    amp: str = _f("off", "mixed precision: off, auto (bf16 on CPU and on CUDA GPUs that support it, else fp16), bf16 or fp16")
    channels_last: bool = _f(False, "use the channels_last memory format")
    compile: bool = _f(False, "torch.compile the model")
    device: str = _f("auto", "auto, cpu or cuda")
    seed: int = _f(0, "random seed (model init, data order, augmentation, dropout)")
    workers: int = _f(0, "DataLoader worker processes")
    # output
    out: str | None = _f(None, "run directory (default: runs/<model>-<attention>-<dataset>-<time>)")
    save_every: int | None = _f(None, "also write last.pt every this many steps")
    progress: bool = _f(True, "tqdm progress bars (off automatically when not on a terminal or under CI)")
    tensorboard: bool = _f(True, "write TensorBoard event files when tensorboard is installed")

    #: Fields that do not change what a run computes, so they may differ between a run and its
    #: resumption or a finished run that is reused: where files are (``out``, ``data_dir``, and
    #: ``download``, which only fetches missing files), what is logged (``progress``, ``tensorboard``,
    #: ``save_every``) and where the same operations execute (``device``; ``workers``: the data order
    #: is seeded; ``compile``: Inductor runs the same operations and, like another device, may round
    #: differently).
    RESULT_FREE_FIELDS = frozenset(
        {"out", "data_dir", "download", "progress", "tensorboard", "save_every", "device", "workers", "compile"}
    )

    def __post_init__(self) -> None:
        self.validate()

    # ------------------------------------------------------------------ helpers
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    def result_dict(self) -> dict[str, Any]:
        """The fields that decide the run's result (all but :attr:`RESULT_FREE_FIELDS`), as plain data."""
        return {k: v for k, v in self.to_dict().items() if k not in self.RESULT_FREE_FIELDS}

    def result_changes(self, saved: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
        """``{field: (saved value, this config's value)}`` for each result field that differs from ``saved``
        (a run's stored config dict; fields added since it was saved count with their defaults)."""
        old = TrainConfig().result_dict()
        old.update({k: v for k, v in saved.items() if k in old})
        return {k: (old[k], v) for k, v in self.result_dict().items() if old[k] != v}

    def replace(self, **changes: Any) -> "TrainConfig":
        """A validated copy with some fields changed (unknown names raise ConfigError)."""
        check_names(changes, "TrainConfig.replace")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (str/int/float/bool/None, lists, dicts): YAML- and ``weights_only``-safe."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str = "config") -> "TrainConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected a mapping of TrainConfig fields, got {type(data).__name__}")
        check_names(data, source)
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides: Any) -> "TrainConfig":
        """Load a YAML file of fields; ``overrides`` (explicit values) win over the file."""
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {str(p)!r} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {str(p)!r} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(p)!r} must hold a mapping of fields, got {type(data).__name__}")
        check_names(data, f"config file {str(p)!r}")
        check_names(overrides, "overrides")
        return cls(**{**data, **overrides})

    def to_yaml(self, path: str | os.PathLike) -> Path:
        """Write the config as YAML, atomically."""
        return atomic_write_text(path, yaml.safe_dump(self.to_dict(), sort_keys=False))

    @property
    def total_epochs(self) -> int:
        """Epochs the run lasts (stage epochs summed in sequential stage mode)."""
        if self.stages and self.stage_mode == "sequential":
            return sum(int(s["epochs"]) for s in self.stages)
        return self.epochs

    # ---------------------------------------------------------------- validate
    def validate(self) -> None:
        """Normalise and check every value; raise ConfigError naming the field."""
        def bad(name: str, expected: str) -> ConfigError:
            return ConfigError(f"TrainConfig.{name} must be {expected}, got {getattr(self, name)!r}")

        for name in ("model", "dataset"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise bad(name, "a non-empty string")
        if isinstance(self.attention, str) and self.attention.lower() in ("", "none", "null"):
            self.attention = None
        if self.attention is not None and not isinstance(self.attention, str):
            raise bad("attention", "a layer name or None")
        for name in ("attn_kwargs", "model_kwargs", "lr_mult"):
            value = getattr(self, name)
            if value is None:
                setattr(self, name, {})
            elif not isinstance(value, dict):
                raise bad(name, "a mapping")
        if self.placement is not None:  # models built with insert_attn take it as attn_where
            if self.placement not in ("block", "stage", "conv", "replace"):
                raise bad("placement", "block, stage, conv, replace or None")
            if self.attention is None:
                raise bad("placement", "None when no attention is set")
            if self.model_kwargs.get("attn_where", self.placement) != self.placement:
                raise bad("placement", f"the same as model_kwargs attn_where={self.model_kwargs['attn_where']!r}")
            self.model_kwargs = {**self.model_kwargs, "attn_where": self.placement}
        for name in ("recipe", "init_from", "weights"):
            value = getattr(self, name)
            if isinstance(value, str) and value.lower() in ("", "none", "null"):
                setattr(self, name, None)
            elif value is not None and not isinstance(value, (str, os.PathLike)):
                raise bad(name, "a string or None")
            elif value is not None:
                setattr(self, name, os.fspath(value))
        self._validate_finetune()
        if isinstance(self.distort, str) and self.distort.lower() in ("", "none", "null"):
            self.distort = None
        if self.distort is not None and not isinstance(self.distort, str):
            raise bad("distort", "a distortion name or None")
        for name in ("train_size", "val_size", "test_size", "image_size", "save_every"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise bad(name, "an integer >= 1 or None")
        if self.clip_grad is not None and (not _number(self.clip_grad) or not self.clip_grad > 0):
            raise bad("clip_grad", "a finite number > 0 or None")
        for name in ("epochs", "batch_size", "step_epochs", "patience"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise bad(name, "an integer >= 1")
        for name in ("seed", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise bad(name, "an integer >= 0")
        if not _number(self.lr) or not self.lr > 0:
            raise bad("lr", "a finite number > 0")
        if not all(isinstance(k, str) and _number(v) and v > 0 for k, v in self.lr_mult.items()):
            raise bad("lr_mult", "a mapping of parameter-group names to finite numbers > 0")
        for name in ("weight_decay", "min_lr", "warmup_epochs", "alpha"):
            if not _number(getattr(self, name)) or getattr(self, name) < 0:
                raise bad(name, "a finite number >= 0")
        for name in ("momentum", "label_smoothing"):
            if not _number(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise bad(name, "a number in [0, 1)")
        if not _number(self.step_gamma) or not 0 < self.step_gamma <= 1:
            raise bad("step_gamma", "a number in (0, 1]")
        self.optimizer = _choice(self, "optimizer", OPTIMIZERS)
        self.schedule = _choice(self, "schedule", SCHEDULES)
        if self.amp is True or self.amp is False or self.amp is None:
            self.amp = "auto" if self.amp else "off"
        if isinstance(self.amp, str) and self.amp.lower() in ("none", "false", "no"):
            self.amp = "off"
        self.amp = _choice(self, "amp", AMP_MODES)
        self.device = _choice(self, "device", DEVICES)
        self.stage_mode = _choice(self, "stage_mode", STAGE_MODES)
        for name in ("download", "channels_last", "compile", "nesterov", "progress", "tensorboard"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if self.augment is not None and not isinstance(self.augment, bool):
            raise bad("augment", "true, false or None")
        if self.out is not None:
            self.out = str(self.out)
        if self.data_dir is not None:
            self.data_dir = str(self.data_dir)
        if self.stages is not None:
            self._validate_stages()

    def _validate_finetune(self) -> None:
        if self.freeze is None or isinstance(self.freeze, str):
            self.freeze = [self.freeze] if self.freeze and self.freeze.lower() not in ("none", "null") else []
        if not isinstance(self.freeze, list) or not all(isinstance(g, str) for g in self.freeze):
            raise ConfigError(f"TrainConfig.freeze must be a list of parameter-group names, got {self.freeze!r}")
        if self.preprocessing is None:
            self.preprocessing = {}
        pre = self.preprocessing
        if not isinstance(pre, dict) or set(pre) - _PREPROCESSING_KEYS:
            raise ConfigError(f"TrainConfig.preprocessing must be a mapping of {sorted(_PREPROCESSING_KEYS)}, got {pre!r}")
        for key in ("crop", "resize"):
            if key in pre and (isinstance(pre[key], bool) or not isinstance(pre[key], int) or pre[key] < 1):
                raise ConfigError(f"TrainConfig.preprocessing.{key} must be an integer >= 1, got {pre[key]!r}")
        for key in ("mean", "std"):
            if key in pre and (not isinstance(pre[key], list) or not pre[key] or not all(_number(v) for v in pre[key])
                               or (key == "std" and not all(v > 0 for v in pre[key]))):
                raise ConfigError(f"TrainConfig.preprocessing.{key} must be a list of finite numbers{' > 0' if key == 'std' else ''}, got {pre[key]!r}")
        if "interpolation" in pre and pre["interpolation"] not in INTERPOLATIONS:
            raise ConfigError(f"TrainConfig.preprocessing.interpolation must be one of {', '.join(INTERPOLATIONS)}; got {pre['interpolation']!r}")

    def _validate_stages(self) -> None:
        if not isinstance(self.stages, list) or not self.stages:
            raise ConfigError(f"TrainConfig.stages must be a non-empty list of mappings, got {self.stages!r}")
        for i, stage in enumerate(self.stages):
            where = f"TrainConfig.stages[{i}]"
            if not isinstance(stage, dict):
                raise ConfigError(f"{where} must be a mapping, got {stage!r}")
            unknown = set(stage) - _STAGE_KEYS
            if unknown:
                raise ConfigError(f"{where} has unknown key(s) {sorted(unknown)}; expected {sorted(_STAGE_KEYS)}")
            epochs = stage.get("epochs")
            if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
                raise ConfigError(f"{where}.epochs must be an integer >= 1, got {epochs!r}")
            if isinstance(stage.get("freeze"), str):
                stage["freeze"] = [stage["freeze"]]
            if not isinstance(stage.get("freeze", []), list) or not all(isinstance(g, str) for g in stage.get("freeze", [])):
                raise ConfigError(f"{where}.freeze must be a list of parameter-group names, got {stage['freeze']!r}")
            train = stage.get("train")
            if train is not None and (
                isinstance(train, str) or not isinstance(train, list) or not all(isinstance(t, str) for t in train)
            ):
                if isinstance(train, str):
                    stage["train"] = train = [train]
                else:
                    raise ConfigError(f"{where}.train must be a list of parameter-group names, got {train!r}")
            for key in ("lr", "alpha"):
                if key in stage and stage[key] is not None:
                    if not _number(stage[key]) or stage[key] < 0 or (key == "lr" and stage[key] == 0):
                        raise ConfigError(f"{where}.{key} must be a number {'> 0' if key == 'lr' else '>= 0'}, got {stage[key]!r}")
            once = stage.get("once", False)
            if not isinstance(once, bool):
                raise ConfigError(f"{where}.once must be true or false, got {once!r}")
            if once and i > 0 and not self.stages[i - 1].get("once", False):
                raise ConfigError(f"{where}: stages with once: true must come before the repeating ones")
            stage.setdefault("name", f"stage{i}")
        if self.stage_mode == "alternate" and all(s.get("once", False) for s in self.stages):
            raise ConfigError("TrainConfig.stages: alternate mode needs at least one stage without once: true")


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _choice(cfg: TrainConfig, name: str, choices: tuple[str, ...]) -> str:
    value = getattr(cfg, name)
    if not isinstance(value, str) or value.lower() not in choices:
        raise ConfigError(f"TrainConfig.{name} must be one of {', '.join(choices)}; got {value!r}")
    return value.lower()


def check_names(data: dict, source: str) -> None:
    """Raise ConfigError naming ``source`` and the closest field for each key of ``data`` that is no field."""
    known = set(TrainConfig.field_names())
    unknown = [k for k in data if k not in known]
    if unknown:
        import difflib

        hints = []
        for k in unknown:
            close = difflib.get_close_matches(str(k), known, n=1)
            hints.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"{source}: unknown TrainConfig field(s) {', '.join(hints)}")


def _plain(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if v is None or isinstance(v, (str, bool, int, float)):
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise ConfigError(f"TrainConfig values must be plain data (str, numbers, lists, dicts), got {type(v).__name__}")


