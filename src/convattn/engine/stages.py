"""Staged schedules: which stage runs at each epoch (``StagePlan``), the parameter groups of a model
(``model_groups``) and what a stage trains or freezes."""

from __future__ import annotations

import math
from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..exceptions import ConfigError
from .config import TrainConfig

__all__ = ["StagePlan", "plan_for", "model_groups", "check_groups", "stage_groups", "apply_stage", "stage_runs"]


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


def plan_for(config: TrainConfig) -> StagePlan:
    """The plan of ``config``: its ``stages``, or one stage of ``epochs`` that trains everything; the groups
    of ``config.freeze`` are frozen in every stage."""
    if not config.stages:
        return StagePlan([{"name": "train", "epochs": config.epochs, "train": None, "freeze": list(config.freeze),
                           "lr": config.lr, "alpha": config.alpha}])
    stages = [{**s, "freeze": sorted({*s.get("freeze", []), *config.freeze})} for s in config.stages]
    return StagePlan(stages, mode=config.stage_mode, patience=config.patience, max_epochs=config.epochs)


def model_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The parameter groups of ``model``: its own ``param_groups()``, else ``backbone`` / ``attention`` /
    ``head`` (:func:`convattn.models.finetune_groups`)."""
    fn = getattr(model, "param_groups", None)
    if callable(fn):
        return dict(fn())
    from ..models import finetune_groups

    return finetune_groups(model)


def check_groups(config: TrainConfig, plan: StagePlan, groups: dict[str, list[nn.Parameter]]) -> None:
    """Raise ConfigError when a stage of ``plan`` trains, or ``config.lr_mult`` names, a parameter group
    that the model (its ``groups``) lacks."""
    model = config.model
    has = f"{sorted(groups)}" if groups else "no parameter groups"
    unknown = sorted(set(config.freeze) - set(groups))
    if unknown:
        raise ConfigError(f"freeze names parameter group(s) {unknown}, but model {model!r} has {has}")
    for stage in plan.stages:
        for key in ("train", "freeze"):
            unknown = [g for g in stage.get(key) or [] if g not in groups]
            if unknown:
                raise ConfigError(f"stage {stage['name']!r} {key}: unknown parameter group(s) {unknown}; model {model!r} has {has}")
        trained, _ = stage_groups(stage, groups)
        if not trained:
            raise ConfigError(f"stage {stage['name']!r} trains nothing: every parameter group of model {model!r} ({has}) is frozen")
    unknown = sorted(set(config.lr_mult) - set(groups))
    if unknown:
        raise ConfigError(f"lr_mult names parameter group(s) {unknown}, but model {model!r} has {has}")


def stage_groups(stage: dict, groups: dict[str, list[nn.Parameter]]) -> tuple[list[str], list[str]]:
    """Parameter groups ``stage`` trains (its ``train``, all without it, less its ``freeze``) and freezes
    (``["all"]``, ``[]`` without groups)."""
    train, freeze = stage.get("train"), set(stage.get("freeze") or [])
    if train is None and not groups:
        return ["all"], []
    trained = [g for g in (sorted(groups) if train is None else train) if g not in freeze]
    return trained, sorted(g for g in groups if g not in trained)


def apply_stage(model: nn.Module, stage: dict, groups: dict[str, list[nn.Parameter]]) -> list[nn.Module]:
    """Let only ``stage``'s groups (all without ``train``, less its ``freeze``) require gradients; return the
    BatchNorms whose parameters are all frozen, which the loop keeps in eval mode so their statistics stay
    frozen too."""
    if stage.get("train") is None and not stage.get("freeze"):
        keep = None
    else:
        keep = {id(p) for g in stage_groups(stage, groups)[0] for p in groups[g]}
    for p in model.parameters():
        p.requires_grad_(keep is None or id(p) in keep)
    return [
        m for m in model.modules()
        if isinstance(m, _BatchNorm) and any(True for _ in m.parameters(recurse=False))
        and not any(p.requires_grad for p in m.parameters(recurse=False))
    ]


def stage_runs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive epochs of one stage in a run's metrics rows: ``[{name, epochs, first_epoch, train, frozen}]``."""
    runs: list[dict[str, Any]] = []
    for row in rows:
        if runs and runs[-1]["name"] == row.get("stage") and runs[-1]["train"] == row.get("train_groups"):
            runs[-1]["epochs"] += 1
            continue
        runs.append({"name": row.get("stage"), "epochs": 1, "first_epoch": row.get("epoch"),
                     "train": row.get("train_groups"), "frozen": row.get("frozen_groups")})
    return runs
