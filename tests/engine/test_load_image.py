"""An image file given to predict / viz / export checks is read as the run's evaluation read its data."""

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.engine import TrainConfig
from convattn.engine.data import build_datasets
from convattn.engine.inference import eval_preprocessing, load_image


@pytest.fixture
def folder(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (tmp_path / c).mkdir()
        for i in range(4):
            size = (40 + 7 * i, 64 - 5 * i, 3)  # not square, so a straight resize would distort
            Image.fromarray((rng.random(size) * 255).astype(np.uint8)).save(tmp_path / c / f"{i}.png")
    return tmp_path


@pytest.mark.parametrize("weights_pre", [None, {"resize": 36, "crop": 32, "interpolation": "bicubic"}])
def test_a_file_reads_as_the_folder_dataset_evaluates_it(folder, weights_pre):
    cfg = TrainConfig(dataset=f"folder:{folder}", image_size=32, val_size=2, test_size=2, seed=0,
                      preprocessing=weights_pre or {})
    datasets, info = build_datasets(cfg, splits=("test",))
    test = datasets["test"]
    assert eval_preprocessing(info) is not None
    for i, (path, _) in enumerate(test.samples):
        want, _ = test[i]
        got = load_image(path, info)
        assert got.shape == want.shape == (3, 32, 32)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_fixed_size_datasets_keep_a_plain_resize():
    info = {"name": "cluttered-digits", "in_chans": 1, "image_size": [60, 60], "mean": [0.1], "std": [0.2]}
    assert eval_preprocessing(info) is None
