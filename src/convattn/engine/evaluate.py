"""Evaluating a classifier over a loader: ``evaluate``, ``logits_of`` and the sums they build on."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..exceptions import ConfigError

__all__ = ["evaluate", "logits_of", "eval_sums", "eval_summary"]


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


@torch.no_grad()
def eval_sums(
    model: nn.Module,
    loader: Any,
    device: torch.device,
    *,
    num_classes: int | None = None,
    autocast: Any = None,
    channels_last: bool = False,
) -> tuple[float, torch.Tensor]:
    """Summed cross-entropy and the confusion matrix (rows: true class, cols: prediction).

    Sums, not means, so that processes can add theirs (DDP) before :func:`eval_summary`; both are kept
    on ``device`` and read back once, at the end. ``autocast`` is a factory of the autocast context, or ``None``.
    """
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    side = num_classes or 0  # the confusion matrix's side: the classes given, else the logits' width
    confusion = None if num_classes is None else torch.zeros(side * side, dtype=torch.int64, device=device)
    for x, y in loader:
        x = x.to(device, non_blocking=True)
        if channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.as_tensor(y).to(device, non_blocking=True)
        with autocast() if autocast is not None else contextlib.nullcontext():
            logits = logits_of(model(x))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        if confusion is None:
            side = logits.shape[1]
            confusion = torch.zeros(side * side, dtype=torch.int64, device=device)
        confusion += torch.bincount(y * side + logits.argmax(1), minlength=side * side)
    if confusion is None:
        return 0.0, torch.zeros(side, side, dtype=torch.int64)
    return float(loss_sum), confusion.view(side, side).cpu()


def eval_summary(loss_sum: float, confusion: torch.Tensor) -> dict[str, Any]:
    """:func:`evaluate`'s dict from :func:`eval_sums`' loss sum and confusion matrix."""
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
        loss_sum, confusion = eval_sums(model, loader, device)
    finally:
        model.train(was_training)
    return eval_summary(loss_sum, confusion)
