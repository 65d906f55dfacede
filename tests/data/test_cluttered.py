"""cluttered-digits and digits: scan split, determinism, the recipe, the dataset items."""

import math

import numpy as np
import pytest
import torch

from convattn.data import build_dataset, get_dataset_info
from convattn.data import cluttered
from convattn.data.cluttered import generate_cluttered_digits, load_scans, scan_split
from convattn.exceptions import ConfigError


def test_scan_split_is_a_stratified_partition():
    splits = {s: scan_split(s) for s in ("train", "val", "test")}
    sets = {s: set(v.tolist()) for s, v in splits.items()}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    _, labels = load_scans()
    assert sets["train"] | sets["val"] | sets["test"] == set(range(len(labels)))
    assert [len(splits[s]) for s in ("train", "val", "test")] == [1257, 270, 270]
    for s in ("val", "test"):  # every class present, in proportion
        counts = torch.bincount(labels[splits[s]], minlength=10)
        assert counts.min() >= 25 and counts.max() <= 30


def test_generation_is_deterministic_and_seeded_per_split():
    a, ya = generate_cluttered_digits(64, split="val", seed=3)
    b, yb = generate_cluttered_digits(64, split="val", seed=3)
    assert torch.equal(a, b) and torch.equal(ya, yb)
    c, _ = generate_cluttered_digits(64, split="val", seed=4)
    d, _ = generate_cluttered_digits(64, split="test", seed=3)
    assert not torch.equal(a, c)
    assert not torch.equal(a, d)
    e, ye = generate_cluttered_digits(64, split="val", seed=3, chunk=5)  # batching does not matter
    assert torch.equal(a, e) and torch.equal(ya, ye)


def _patched_scans(monkeypatch, keep_split: str | None, other_value: float):
    """Scans of ``keep_split`` become blank, all other scans constant ``other_value`` (or the reverse)."""
    images, labels = load_scans()
    own = torch.zeros(len(labels), dtype=torch.bool)
    own[scan_split(keep_split)] = True
    fake = torch.where(own.view(-1, 1, 1, 1), torch.zeros(()), torch.full((), other_value)).expand_as(images)
    monkeypatch.setattr(cluttered, "load_scans", lambda: (fake.contiguous(), labels))


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_digits_and_clutter_come_only_from_the_splits_scans(monkeypatch, split):
    # every scan of the split is blank and every other scan is white: any ink means a leak
    _patched_scans(monkeypatch, split, 1.0)
    x, _ = generate_cluttered_digits(200, split=split, seed=0)
    assert x.max() == 0


def test_clutter_is_drawn(monkeypatch):
    # the reverse: only the split's scans are white, so 8 fragments of 8x8 (+ the digit) show up
    images, labels = load_scans()
    own = torch.zeros(len(labels), dtype=torch.bool)
    own[scan_split("val")] = True
    fake = torch.where(own.view(-1, 1, 1, 1), torch.ones(()), torch.zeros(())).expand_as(images).contiguous()
    monkeypatch.setattr(cluttered, "load_scans", lambda: (fake, labels))
    x, _ = generate_cluttered_digits(20, split="val", seed=0, num_clutter=8)
    ink = (x > 127).flatten(1).sum(1).float()
    # digit: at least 14x14 px of a white square; clutter adds up to 8 * 64 px (overlaps possible)
    assert (ink >= 14 * 14).all()
    x0, _ = generate_cluttered_digits(20, split="val", seed=0, num_clutter=0)
    assert ((x > 127).flatten(1).sum(1) > (x0 > 127).flatten(1).sum(1)).all()


def test_digit_geometry_without_clutter():
    x, y = generate_cluttered_digits(100, split="train", seed=1, num_clutter=0)
    assert x.shape == (100, 1, 60, 60) and x.dtype == torch.uint8
    assert y.min() >= 0 and y.max() <= 9
    for img in x[:, 0]:
        rows = torch.nonzero(img.sum(1) > 0).flatten()
        cols = torch.nonzero(img.sum(0) > 0).flatten()
        assert len(rows) > 0
        extent = max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1).item()
        # a scan of side 14-22 px rotated by at most 45 degrees (+1 px of bilinear support)
        assert 6 <= extent <= math.ceil(22 * math.sqrt(2)) + 2


def test_labels_match_the_scans():
    # with no clutter and no rotation, the rendered digit matches (by cross-correlation) a scan of its own class
    x, y = generate_cluttered_digits(40, split="test", seed=2, num_clutter=0, max_angle=0.0, digit_size=(16, 16))
    scans, labels = load_scans()
    pool = scan_split("test")
    ref = torch.nn.functional.interpolate(scans[pool], size=(16, 16), mode="bilinear", align_corners=False)
    ref = ref - ref.mean((2, 3), keepdim=True)
    ref = ref / ref.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
    score = torch.nn.functional.conv2d(x.float() / 255, ref).amax((2, 3))  # (40, scans)
    best = labels[pool][score.argmax(1)]
    assert (best == y).sum() >= 37


def test_dataset_items_and_sizes():
    info = get_dataset_info("cluttered-digits")
    assert (info.num_classes, info.in_chans, info.image_size) == (10, 1, (60, 60))
    ds = build_dataset("cluttered-digits", "val")
    assert len(ds) == 2000 and ds.info == info
    x, y = ds[5]
    assert x.dtype == torch.float32 and x.shape == (1, 60, 60) and isinstance(y, int)
    raw = ds.images[5].float() / 255
    torch.testing.assert_close(x, (raw - info.mean[0]) / info.std[0])
    small = build_dataset("cluttered-digits", "train", train_size=10, image_size=(48, 64), seed=1)
    assert len(small) == 10 and small[0][0].shape == (1, 48, 64)
    assert small.info.image_size == (48, 64)


def test_normalisation_constants():
    ds = build_dataset("cluttered-digits", "train")  # the default 12,000 images, seed 0
    x = ds.images.float() / 255
    assert abs(x.mean().item() - ds.info.mean[0]) < 2e-3
    assert abs(x.std().item() - ds.info.std[0]) < 2e-3
    scans, _ = load_scans()
    d = get_dataset_info("digits")
    t = scans[scan_split("train")]
    assert abs(t.mean().item() - d.mean[0]) < 2e-3 and abs(t.std().item() - d.std[0]) < 2e-3


def test_bad_options():
    with pytest.raises(ConfigError, match="augmentation"):
        build_dataset("cluttered-digits", "train", train_size=4, augment=True)
    with pytest.raises(ConfigError, match="distort"):
        build_dataset("cluttered-digits", "train", train_size=4, distort="rts")
    with pytest.raises(ConfigError, match="too small"):
        generate_cluttered_digits(4, canvas_size=16)
    with pytest.raises(ConfigError, match="positive"):
        build_dataset("cluttered-digits", "val", val_size=0)


def test_digits_dataset():
    tr, va, te = (build_dataset("digits", s) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (1257, 270, 270)
    assert tr[0][0].shape == (1, 8, 8)
    # items are the scans of the split, in scan order
    scans, labels = load_scans()
    idx = scan_split("val")
    x, y = va[3]
    torch.testing.assert_close(x * va.info.std[0] + va.info.mean[0], scans[idx[3]], atol=1 / 255, rtol=0)
    assert y == labels[idx[3]].item()
    up = build_dataset("digits", "test", image_size=28, test_size=50, seed=2)
    assert len(up) == 50 and up[0][0].shape == (1, 28, 28)
    again = build_dataset("digits", "test", image_size=28, test_size=50, seed=2)
    assert torch.equal(up[7][0], again[7][0])
    rts = build_dataset("digits", "train", image_size=28, distort="rts", train_size=4)
    assert rts[0][0].shape == (1, 42, 42)
    assert get_dataset_info("digits", image_size=28, distort="rts").image_size == (42, 42)
    assert np.isfinite(rts[1][0].numpy()).all()
