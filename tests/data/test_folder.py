"""folder:PATH datasets built from a few PNG files."""

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.data import build_dataset, get_dataset_info
from convattn.exceptions import DatasetNotFoundError


def _write_tree(root, classes=("cat", "dog"), per_class=10, size=(20, 30)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            arr = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / c / f"{i:03d}.png")


def _files(ds):
    return {p for p, _ in ds.samples}


def test_flat_tree_is_split_80_10_10(tmp_path):
    _write_tree(tmp_path)
    name = f"folder:{tmp_path}"
    parts = {s: build_dataset(name, s, image_size=16) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [16, 2, 2]
    assert not _files(parts["train"]) & _files(parts["val"])
    assert not _files(parts["train"]) & _files(parts["test"])
    assert not _files(parts["val"]) & _files(parts["test"])
    x, y = parts["val"][0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and y in (0, 1)
    assert parts["train"][0][0].shape == (3, 16, 16)  # random resized crop to the same size
    info = get_dataset_info(name, image_size=16)
    assert info.num_classes == 2 and info.class_names == ("cat", "dog") and info.in_chans == 3
    again = build_dataset(name, "val", image_size=16, seed=5)  # the split does not depend on the seed
    assert _files(again) == _files(parts["val"])
    assert {lbl for _, lbl in parts["test"].samples} == {0, 1}  # every class in every split


def test_train_val_test_subfolders(tmp_path):
    _write_tree(tmp_path / "train", per_class=6)
    _write_tree(tmp_path / "val", per_class=2)
    name = f"folder:{tmp_path}"
    tr, va, te = (build_dataset(name, s, image_size=12) for s in ("train", "val", "test"))
    assert (len(tr), len(va), len(te)) == (12, 4, 4)
    assert _files(te) == _files(va)  # no test/ folder: the validation images are used
    _write_tree(tmp_path / "test", per_class=3)
    assert len(build_dataset(name, "test", image_size=12)) == 6
    x, _ = va[0]
    assert x.shape == (3, 12, 12)


def test_train_only_holds_out_val(tmp_path):
    _write_tree(tmp_path / "train", per_class=10)
    name = f"folder:{tmp_path}"
    tr, va = build_dataset(name, "train"), build_dataset(name, "val")
    assert (len(tr), len(va)) == (18, 2) and not _files(tr) & _files(va)
    assert tr.info.image_size == (224, 224)


def test_missing_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no such directory"):
        build_dataset(f"folder:{tmp_path / 'nope'}", "train")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetNotFoundError, match="class"):
        build_dataset(f"folder:{tmp_path / 'empty'}", "train")
