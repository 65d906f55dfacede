"""Training engine: ``TrainConfig``, ``train``, ``evaluate``, checkpoints and ``load_run``.

One run: its config (``config``), model (``build``), run directory and resume rules (``rundir``),
stages (``stages``), metrics log and results (``metrics``), evaluation (``evaluate``), divergence checks
(``guard``) and loop (``trainer``); after it, evaluation and prediction (``inference``), export
(``export``: ``convattn.export``), and the modules of your own models a run records (``plugins``).

Example:
    >>> from convattn.engine import TrainConfig
    >>> cfg = TrainConfig(model="simple_cnn", attention="se", epochs=1, batch_size=32)
    >>> cfg.total_epochs
    1
"""

from __future__ import annotations

from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .config import TrainConfig
from .inference import evaluate_run, plot_confusion, predict_images
from .optim import WarmupSchedule, build_optimizer, param_groups_no_decay
from .recipes import get_recipe, list_recipes, resolve_config
from .build import init_from_run, load_run, model_from_checkpoint
from .evaluate import evaluate, logits_of
from .trainer import train

__all__ = [
    "TrainConfig",
    "resolve_config",
    "get_recipe",
    "list_recipes",
    "train",
    "init_from_run",
    "evaluate",
    "evaluate_run",
    "predict_images",
    "plot_confusion",
    "load_run",
    "load_checkpoint",
    "save_checkpoint",
    "model_from_checkpoint",
    "logits_of",
    "build_optimizer",
    "param_groups_no_decay",
    "WarmupSchedule",
    "get_rng_state",
    "set_rng_state",
]
