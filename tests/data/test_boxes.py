"""Each cluttered digit's box: where its ink is, carried through the datasets."""

import pytest
import torch
from torch.utils.data import DataLoader

from convattn.data import build_dataset
from convattn.data.cluttered import generate_cluttered_digits
from convattn.exceptions import ConfigError


def test_boxes_leave_the_images_alone_and_do_not_depend_on_chunking():
    x, y = generate_cluttered_digits(40, split="val", seed=5)
    xb, yb, boxes = generate_cluttered_digits(40, split="val", seed=5, return_boxes=True)
    _, _, chunked = generate_cluttered_digits(40, split="val", seed=5, return_boxes=True, chunk=7)
    assert torch.equal(x, xb) and torch.equal(y, yb) and torch.equal(boxes, chunked)
    assert boxes.dtype == torch.int64 and boxes.shape == (40, 4)


def test_box_is_the_tight_box_of_the_digit_ink():
    """Without clutter the image is the digit alone: the box is exactly where pixels reach 10 %."""
    x, _, boxes = generate_cluttered_digits(30, split="test", seed=1, num_clutter=0, return_boxes=True)
    for img, box in zip(x[:, 0], boxes):
        ys, xs = (img >= 26).nonzero(as_tuple=True)  # 0.1 of 255 is 25.5
        assert box.tolist() == [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    side = boxes[:, 2:] - boxes[:, :2]
    assert side.min() >= 5 and side.max() <= 31  # 14-22 px scans, rotated by up to 45 degrees


def test_unrotated_digit_box_lies_in_its_placed_square():
    x, _, boxes = generate_cluttered_digits(20, split="train", seed=2, num_clutter=0, max_angle=0.0,
                                            digit_size=(16, 16), return_boxes=True)
    side = boxes[:, 2:] - boxes[:, :2]  # the 16 px square plus at most the bilinear fringe on each side
    assert side.max() <= 18 and side.min() >= 6


def test_dataset_carries_boxes_and_with_boxes_yields_them():
    ds = build_dataset("cluttered-digits", "val", val_size=6, seed=3)
    _, _, boxes = generate_cluttered_digits(6, split="val", seed=3, return_boxes=True)
    assert torch.equal(ds.boxes, boxes)
    x, y = ds[0]  # items and batches are unchanged
    assert x.shape == (1, 60, 60) and isinstance(y, int)
    xb, yb, bb = next(iter(DataLoader(ds.with_boxes(), batch_size=4)))
    assert xb.shape == (4, 1, 60, 60) and yb.tolist() == ds.labels[:4].tolist()
    assert bb.dtype == torch.float32 and torch.equal(bb, boxes[:4].float())
    with pytest.raises(ConfigError, match="has no object boxes"):
        build_dataset("digits", "val").with_boxes()


def test_boxes_follow_a_resize_and_refuse_moving_pipelines():
    from convattn.data._base import DatasetInfo, ImageTensorDataset

    info = DatasetInfo("toy", 2, 1, (5, 10), (0.0,), (1.0,))
    images = torch.zeros(1, 1, 10, 20, dtype=torch.uint8)
    boxes = torch.tensor([[2, 4, 6, 8]])
    ds = ImageTensorDataset(images, torch.tensor([1]), info, resize=(5, 10), boxes=boxes)
    x, y, box = ds.with_boxes()[0]
    assert x.shape == (1, 5, 10) and y == 1 and box.tolist() == [1.0, 2.0, 3.0, 4.0]
    flip = ImageTensorDataset(images, torch.tensor([1]), info, augment=lambda t: t.flip(-1), boxes=boxes)
    with pytest.raises(ConfigError, match="boxes do not follow"):
        flip.with_boxes()
    with pytest.raises(ConfigError, match=r"boxes must have shape \(1, 4\)"):
        ImageTensorDataset(images, torch.tensor([1]), info, boxes=torch.zeros(2, 4))
