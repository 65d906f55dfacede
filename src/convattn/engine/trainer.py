"""The training loop: ``train(config)``.

One loop covers plain training, staged schedules for multi-branch models (train
some parameter groups, freeze the rest, optionally alternating until the
validation loss stops improving; :mod:`.stages`), mixed precision, ``channels_last``,
``torch.compile`` and DistributedDataParallel under ``torchrun``. The model comes from
:mod:`.build`, the run directory and resume rules from :mod:`.rundir`, the metrics log
from :mod:`.metrics`.

Runs are reproducible and resumable: the seed fixes model initialisation, each
epoch's data order (a permutation of ``(seed, epoch)``), augmentation and dropout;
``last.pt`` holds every random state, and ``train(config, resume=run_dir)``
continues a run, also from the middle of an epoch, to the same final weights.
A non-finite loss, gradient norm or weight stops the run as ``diverged``; no checkpoint
is written from non-finite weights. The running loss and accuracy stay on the device; they (and the
first non-finite step) are read back only for the progress bar (at most twice a second), checkpoints
and the end of an epoch, so a GPU step never waits for the host.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import CheckpointError, ConfigError, ConvattnError, RunDirectoryError, RunDivergedError
from .._io import os_reason
from . import distributed as D
from .build import build_model, init_weights, write_init_report
from .checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from .config import TrainConfig
from .data import build_datasets, epoch_seed, make_eval_loader, make_train_loader, seed_everything
from .evaluate import eval_sums, eval_summary, logits_of
from .guard import diverged, first_non_finite, largest_weight, sigterm_as_interrupt
from .memory import keep_freed_memory
from .metrics import EpochLog, MetricsWriter, epoch_line, progress_bar, read_metrics, run_results, stopped_results, write_results
from .optim import WarmupSchedule, build_optimizer, mixed_precision
from .rundir import (
    check_resume_config, check_resume_out, claim_run_dir, config_file_edits, finished_results, new_run_dir, resume_file,
)
from .stages import apply_stage, check_groups, model_groups, plan_for, stage_groups, stage_runs

__all__ = ["train"]


# ------------------------------------------------------------------- trainer
class _Trainer:
    def __init__(self, config: TrainConfig, ctx: D.DistContext, run_dir: Path, resume: str | os.PathLike | None):
        self.config, self.ctx, self.device, self.run_dir = config, ctx, ctx.device, run_dir
        self.ckpt = None
        if resume is not None:
            self.ckpt = load_checkpoint(resume_file(resume), map_location="cpu")
            check_resume_config(config, self.ckpt["config"])
            config_file_edits(run_dir, self.ckpt["config"])
        seed_everything(config.seed)
        datasets, self.data_info = build_datasets(config)
        if self.ckpt is not None:  # the user modules the run recorded define its model: import them again
            self.data_info.setdefault("modules", self.ckpt.get("data_info", {}).get("modules", []))
        self.model = build_model(config, self.data_info).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_params = sum(p.numel() for p in self.model.parameters())
        self.groups: dict[str, list[nn.Parameter]] = model_groups(self.model)
        self.init_report = init_weights(self.model, config) if self.ckpt is None else None  # weights, init_from
        # data/dropout randomness differs per rank; model init above does not
        seed_everything(config.seed + ctx.rank)
        pin = self.device.type == "cuda"
        self.train_loader, self.sampler, self.generator = make_train_loader(
            datasets["train"], config, rank=ctx.rank, world_size=ctx.world_size, pin_memory=pin)
        self.val_loader = make_eval_loader(datasets["val"], config, rank=ctx.rank, world_size=ctx.world_size, pin_memory=pin)
        self.test_loader = make_eval_loader(datasets["test"], config, rank=ctx.rank, world_size=ctx.world_size, pin_memory=pin)
        n = self.sampler.num_samples
        self.steps_per_epoch = n // config.batch_size if self.train_loader.drop_last else math.ceil(n / config.batch_size)
        self.autocast, self.scaler = mixed_precision(config.amp, self.device)
        self.plan = plan_for(config)
        check_groups(config, self.plan, self.groups)
        self.epoch = self.step = self.batch_in_epoch = 0
        self.partial = [0.0, 0.0, 0.0]  # loss sum, correct, count of the current epoch before a resume
        self.log: EpochLog | None = None  # the current epoch's steps, on the device
        self.epoch_elapsed = 0.0  # seconds of the current epoch run before the last checkpoint
        self.best_val_acc = -1.0
        self.opt_run_id = -1
        self.optimizer = self.scheduler = None
        if self.ckpt is not None:
            self._restore()

    # --------------------------------------------------------------- stages
    def _configure_stage(self) -> None:
        stage = self.plan.current
        self.frozen_norms = apply_stage(self.model, stage, self.groups)
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

    # ------------------------------------------------------------ checkpoints
    def _rng_states(self) -> list[dict[str, Any]]:
        """Every rank's random states (a collective: call it on all ranks)."""
        return D.gather_objects(self.ctx, get_rng_state())

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
            "partial": self.log.read()[0] if self.log is not None else self.partial,
            "epoch_elapsed": self.epoch_elapsed,
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

    def _stop_if(self, found: tuple[str, str] | None, *, lr: float) -> None:
        if found is not None:  # the message is built only for a run that stops
            raise diverged(*found, where=f"step {self.step} (epoch {self.epoch + 1}, lr {lr:.3g})",
                           saved=(self.run_dir / "last.pt").is_file())

    def _sums(self, lr: float) -> list[float]:
        """The epoch's ``[loss sum, correct, count]`` (one read back); stops the run at the first step whose
        loss or gradient norm was not finite (under DDP a collective: call it on all ranks)."""
        sums, first = self.log.read()
        found = first_non_finite(self.ctx, first[2] if first else {})
        if found is not None:  # results.json: the first bad step
            self.step, lr = first[:2] if first else (self.step, lr)
            self._stop_if(found, lr=lr)
        return sums

    def _restore(self) -> None:
        c = self.ckpt
        try:
            self.model.load_state_dict(c["model"])
            self.epoch = int(c["epoch"])
            self.batch_in_epoch = int(c["batch_in_epoch"])
            self.step = int(c["step"])
            self.partial = [float(v) for v in c["partial"]]
            self.epoch_elapsed = float(c.get("epoch_elapsed", 0.0))
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
    def _train_epoch(self) -> dict[str, float]:
        cfg = self.config
        self.sampler.set_epoch(self.epoch)
        self.sampler.set_start(self.batch_in_epoch * cfg.batch_size)
        self.generator.manual_seed(epoch_seed(cfg.seed, self.epoch, self.ctx.rank))
        self.model.train()
        for m in self.frozen_norms:
            m.eval()
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        has_reg = callable(getattr(self.model, "regularization", None))
        remaining = self.steps_per_epoch - self.batch_in_epoch
        bar = progress_bar(cfg.progress and self.ctx.is_main, total=self.steps_per_epoch, initial=self.batch_in_epoch,
                           desc=f"epoch {self.epoch + 1}/{self._epochs_label()} [{self.plan.current['name']}]")
        t0 = time.perf_counter() - self.epoch_elapsed  # a resumed epoch counts its time before the interruption
        shown = -math.inf  # when the bar last showed the running loss
        watched = ("the loss",) + (("the gradient norm",) if cfg.clip_grad and not self.scaler.is_enabled() else ())
        self.log = EpochLog(watched, start=self.partial)
        for i, (x, y) in enumerate(self.train_loader):
            if i >= remaining:
                break
            x = x.to(self.device, non_blocking=True)
            if cfg.channels_last and x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            y = torch.as_tensor(y).to(self.device, non_blocking=True)
            lr = self.optimizer.param_groups[0]["lr"]
            with self.autocast() if self.autocast is not None else contextlib.nullcontext():
                outputs = self.fwd(x)
                logits = logits_of(outputs)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
                if has_reg and self.alpha > 0:
                    loss = loss + self.alpha * self.model.regularization(outputs)
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            norm = None
            if cfg.clip_grad:  # watched unless fp16's scaler, which skips the steps whose gradients overflow itself
                self.scaler.unscale_(self.optimizer)
                norm = torch.nn.utils.clip_grad_norm_(trainable, cfg.clip_grad)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            self.step += 1
            self.log.add(self.step, lr, logits, y, [loss, norm][: len(watched)])
            self.batch_in_epoch += 1
            if bar is not None:
                bar.update(1)
                now = time.perf_counter()
                if now - shown >= 0.5 or self.batch_in_epoch == self.steps_per_epoch:  # at most twice a second
                    shown = now  # (under DDP the ranks check together, at checkpoints and epoch ends)
                    loss_sum, correct, count = self._sums(lr) if not self.ctx.enabled else self.log.read()[0]
                    bar.set_postfix(loss=f"{loss_sum / count:.4f}", acc=f"{correct / count:.3f}",
                                    img_s=f"{count * self.ctx.world_size / max(now - t0, 1e-9):.0f}")
            if cfg.save_every and self.step % cfg.save_every == 0 and self.batch_in_epoch < self.steps_per_epoch:
                self._sums(lr)
                self._stop_if(first_non_finite(self.ctx, {"the largest weight": largest_weight(self.model)}), lr=lr)
                self.epoch_elapsed = time.perf_counter() - t0
                self._save("last.pt")
        if bar is not None:
            bar.close()
        elapsed = time.perf_counter() - t0
        sums = self._sums(self.optimizer.param_groups[0]["lr"])
        loss_sum, correct, count = D.all_reduce_sum(self.ctx, sums, self.device)
        return {
            "train_loss": loss_sum / max(count, 1),
            "train_acc": correct / max(count, 1),
            "epoch_time": elapsed,
            "images_per_s": count / max(elapsed, 1e-9),
        }

    def _epochs_label(self) -> str:
        return str(self.config.total_epochs) if self.plan.mode == "sequential" else f"<={self.config.epochs}"

    def _evaluate(self, loader: Any) -> dict[str, Any]:
        self.model.eval()
        loss_sum, confusion = eval_sums(
            self.model, loader, self.device, num_classes=self.data_info["num_classes"],
            autocast=self.autocast, channels_last=self.config.channels_last,
        )
        return eval_summary(*D.all_reduce_eval(self.ctx, loss_sum, confusion, self.device))

    def run(self) -> dict[str, Any]:
        cfg = self.config
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            cfg.to_yaml(self.run_dir / "config.yaml")
            metrics = MetricsWriter(
                self.run_dir, keep_before_epoch=self.epoch if self.ckpt is not None else None,
                tensorboard=cfg.tensorboard,
            )
            if self.init_report is not None:
                write_init_report(self.init_report, self.run_dir)
        self.ckpt = None  # free memory
        rows = read_metrics(self.run_dir) if self.epoch > 0 else []  # resumed: the epochs already run count
        try:
            while not self.plan.done:
                if self.opt_run_id != self.plan.run_id:
                    self._configure_stage()
                stage_name = self.plan.current["name"]
                trained, frozen = stage_groups(self.plan.current, self.groups)
                tr = self._train_epoch()
                D.broadcast_buffers(self.ctx, self.model)  # BatchNorm statistics of rank 0 everywhere
                val = self._evaluate(self.val_loader)
                lr = self.optimizer.param_groups[0]["lr"]
                self._stop_if(first_non_finite(self.ctx, {"the largest weight": largest_weight(self.model),
                                                          "the validation loss": val["loss"]}), lr=lr)
                self.plan.end_epoch(val["loss"])
                self.epoch += 1
                self.batch_in_epoch = 0
                self.partial, self.log = [0.0, 0.0, 0.0], None
                self.epoch_elapsed = 0.0
                row = {
                    "epoch": self.epoch, "stage": stage_name, "step": self.step, **{k: tr[k] for k in ("train_loss", "train_acc")},
                    "val_loss": val["loss"], "val_acc": val["accuracy"], "lr": lr,
                    "epoch_time": tr["epoch_time"], "images_per_s": tr["images_per_s"],
                    "train_groups": trained, "frozen_groups": frozen, "alpha": self.alpha,
                }
                rows.append(row)
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
                    print(epoch_line(row), file=sys.stderr, flush=True)
            test = self._evaluate(self.test_loader)
        except (RunDivergedError, KeyboardInterrupt) as exc:
            if self.ctx.is_main:  # the checkpoints stay as they were; results.json says why the run stopped
                status = "diverged" if isinstance(exc, RunDivergedError) else "interrupted"
                write_results(self.run_dir, stopped_results(status, run_dir=self.run_dir, epochs=self.epoch,
                                                            steps=self.step, reason=str(exc) or "interrupted"))
            raise
        finally:
            if self.ctx.is_main:
                metrics.close()
        result = run_results(rows, run_dir=self.run_dir, params=self.num_params, epochs=self.epoch, steps=self.step,
                             best_val_acc=self.best_val_acc, test=test)
        if self.config.stages:
            result["stages"] = stage_runs(read_metrics(self.run_dir))
        if self.init_report is not None:
            result["init_from"] = {k: self.init_report[k] for k in ("checkpoint", "epochs")}
        if self.ctx.is_main:
            write_results(self.run_dir, result)
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
            exactly where it stopped (also mid-epoch). ``config`` may differ from the
            run's only in ``TrainConfig.RESULT_FREE_FIELDS`` (a changed ``epochs`` is
            refused; ``init_from`` starts a new run from a finished one). A finished run
            returns its saved results.

    Returns:
        ``{"run_dir", "params", "epochs", "steps", "epoch_time" (mean seconds),
        "train_loss", "train_acc", "val_loss", "val_acc", "best_val_acc",
        "test_loss", "test_acc", "images_per_s"}``.

    Raises:
        ConfigError: invalid values, unknown model / layer / parameter group, a new run in a non-empty
            directory, ``resume`` with ``config.out`` elsewhere, a config.yaml edited before resuming.
        RunDirectoryError: the run directory is locked by another run, or cannot be written.
        RunDivergedError: a non-finite loss, gradient norm or weight (results.json: ``diverged``).
        DatasetNotFoundError: missing dataset files.
        CheckpointError: an unreadable, corrupt or unsafe checkpoint to resume from.
    """
    if not isinstance(config, TrainConfig):
        raise ConfigError(f"train expects a TrainConfig, got {type(config).__name__}")
    config.validate()
    if resume is not None:
        check_resume_out(config, resume)
        finished = finished_results(config, resume)
        if finished is not None:
            return finished
    run_dir = resume_file(resume).parent if resume is not None else new_run_dir(config, check=False)
    ctx = D.setup(config.device)
    if ctx.device.type == "cpu":
        keep_freed_memory()
    lock = None
    try:
        run_dir = D.broadcast_path(ctx, run_dir)  # every rank uses rank 0's directory name
        if ctx.is_main:
            lock = claim_run_dir(run_dir, resume=resume is not None)
        with sigterm_as_interrupt():
            return _Trainer(config, ctx, run_dir, resume).run()
    except OSError as exc:  # a full disk, a read-only folder ...: one line naming the file
        raise exc if isinstance(exc, ConvattnError) else RunDirectoryError(f"{exc.filename or run_dir}: {os_reason(exc)}")
    finally:
        if lock is not None:
            lock.release()
        D.cleanup(ctx)
