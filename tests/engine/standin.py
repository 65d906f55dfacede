"""Tiny stand-in model and dataset for the engine tests (fast, no files, no downloads).

``install()`` points the engine at them (the trainer, model building and evaluation of
saved runs); subprocess tests call it from their script.
The dataset flips images at random through torch's global generator and the model
has dropout, so resuming must restore those random states to match.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset


class FlipDataset(Dataset):
    def __init__(self, n: int, *, seed: int, augment: bool, num_classes: int = 3, size: int = 8):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, num_classes, (n,), generator=g)
        centers = torch.randn(num_classes, 1, size, size, generator=g)
        self.x = centers[self.y] + 0.5 * torch.randn(n, 1, size, size, generator=g)
        self.augment = augment

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        x = self.x[i]
        if self.augment and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.y[i])


class TinyNet(nn.Module):
    """conv-BN-ReLU backbone, a 1x1 "attention" conv, a linear "decision" head."""

    def __init__(self, num_classes: int = 3, in_chans: int = 1):
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(in_chans, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU())
        self.attn = nn.Conv2d(6, 6, 1)
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        f = self.backbone(x)
        a = torch.sigmoid(self.attn(f))
        f = (f * a).mean((2, 3))
        return {"logits": self.head(self.drop(f)), "attention": a}

    def param_groups(self):
        return {
            "backbone": list(self.backbone.parameters()),
            "attention": list(self.attn.parameters()),
            "decision": list(self.head.parameters()),
        }

    def regularization(self, outputs):
        return outputs["attention"].mean()


def build_datasets(config, splits=("train", "val", "test")):
    sizes = {"train": config.train_size or 96, "val": config.val_size or 32, "test": config.test_size or 32}
    datasets = {
        s: FlipDataset(sizes[s], seed={"train": 1, "val": 2, "test": 3}[s], augment=(s == "train"))
        for s in splits
    }
    info = {
        "name": "standin", "num_classes": 3, "in_chans": 1, "image_size": [8, 8],
        "mean": [0.0], "std": [1.0], "class_names": ["a", "b", "c"],
    }
    return datasets, info


def build_model(config, data_info):
    return TinyNet(data_info["num_classes"], data_info["in_chans"])


def install(monkeypatch=None) -> None:
    from convattn.engine import build, inference, trainer

    patches = [(trainer, "build_datasets", build_datasets), (inference, "build_datasets", build_datasets),
               (trainer, "build_model", build_model), (build, "build_model", build_model)]
    for module, name, value in patches:
        if monkeypatch is not None:
            monkeypatch.setattr(module, name, value)
        else:
            setattr(module, name, value)
