"""Image files read as what they are: 8-bit by 255, 16-bit by 65535, float as 0-1 values; bad files named."""

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from convattn.data import build_dataset
from convattn.data.images import open_image, read_image
from convattn.exceptions import ConfigError

RAMP = np.linspace(0, 1, 32 * 48, dtype=np.float64).reshape(32, 48)  # mean 0.5


def write_ramp16(path):
    Image.fromarray(np.round(RAMP * 65535).astype(np.uint16)).save(path)
    return path


def write_float_tiff(path, values=RAMP):
    Image.fromarray(values.astype(np.float32)).save(path)
    return path


def write_bomb(path, monkeypatch, pixels):
    """A small PNG over a lowered PIL limit: ``pixels`` of 100 (the limit), so no memory is spent."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    Image.new("L", (pixels, 1)).save(path)
    return path


def test_16bit_png_is_scaled_by_65535(tmp_path):
    path = write_ramp16(tmp_path / "ramp.png")
    with Image.open(path) as img:
        assert img.mode in ("I;16", "I")
    x = read_image(path, 1)
    assert x.shape == (1, 32, 48) and x.dtype == torch.float32
    assert x.mean().item() == pytest.approx(0.5, abs=1e-3)  # not 0.983: clipped to 8 bits
    assert torch.allclose(x[0], torch.from_numpy(RAMP).float(), atol=1e-4)
    rgb = read_image(path, 3, (16, 24))
    assert rgb.shape == (3, 16, 24) and torch.equal(rgb[0], rgb[2]) and rgb.mean().item() == pytest.approx(0.5, abs=1e-2)


def test_float_tiff_is_taken_as_0_1_values_and_clamped(tmp_path):
    x = read_image(write_float_tiff(tmp_path / "ramp.tif"), 3)
    assert x.shape == (3, 32, 48) and x.mean().item() == pytest.approx(0.5, abs=1e-4)  # not all zeros
    wild = np.array([[-2.0, 0.25], [3.0, np.nan]])
    assert read_image(write_float_tiff(tmp_path / "wild.tif", wild), 1)[0].tolist() == [[0.0, 0.25], [1.0, 0.0]]


def test_8bit_images_are_scaled_by_255(tmp_path):
    Image.new("RGB", (5, 4), (255, 51, 0)).save(tmp_path / "a.png")
    Image.new("P", (5, 4), 7).save(tmp_path / "p.gif")
    x = read_image(tmp_path / "a.png", 3)
    assert x.shape == (3, 4, 5) and x[:, 0, 0].tolist() == pytest.approx([1.0, 0.2, 0.0])
    assert read_image(tmp_path / "p.gif", 1).shape == (1, 4, 5)


def test_unreadable_files_raise_one_line_naming_them(tmp_path):
    (tmp_path / "notes.png").write_text("not an image")
    with pytest.raises(ConfigError, match=r"notes.png' is not a readable image"):
        read_image(tmp_path / "notes.png", 3)
    write_ramp16(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConfigError, match=r"cut.png' is not a readable image") as info:
        read_image(tmp_path / "cut.png", 1)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("pixels", [150, 250])  # PIL warns over the limit, refuses over twice it
def test_decompression_bombs_are_errors_naming_file_and_pixels(tmp_path, monkeypatch, pixels):
    path = write_bomb(tmp_path / "bomb.png", monkeypatch, pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ConfigError, match=rf"bomb.png' is too large to read safely .*{pixels} pixels"):
            open_image(path)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]  # the error, only


def test_folder_dataset_reads_16bit_and_float_images(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        (tmp_path / "val" / cls).mkdir(parents=True)
    write_ramp16(tmp_path / "val" / "a" / "ramp.png")
    write_float_tiff(tmp_path / "val" / "b" / "ramp.tif")
    Image.new("RGB", (8, 8), (255, 255, 255)).save(tmp_path / "train" / "a" / "x.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "train" / "b" / "x.png")
    ds = build_dataset(f"folder:{tmp_path}", "val", image_size=16)
    mean, std = torch.tensor(ds.info.mean).view(3, 1, 1), torch.tensor(ds.info.std).view(3, 1, 1)
    for i in range(2):
        x, _ = ds[i]
        raw = x * std + mean  # undo the normalisation: the 0-1 image, centre crop of the ramp
        assert x.shape == (3, 16, 16) and 0.3 < raw.mean().item() < 0.7, ds.samples[i]
        assert raw.min() >= -1e-4 and raw.max() <= 1 + 1e-4


def test_folder_dataset_names_the_bad_file(tmp_path, monkeypatch):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.new("RGB", (8, 8)).save(tmp_path / cls / "ok.png")
    (tmp_path / "a" / "broken.png").write_text("not an image")
    write_bomb(tmp_path / "b" / "huge.png", monkeypatch, 250)
    ds = build_dataset(f"folder:{tmp_path}", "train", image_size=8)
    names = {p.rsplit("/", 1)[-1]: i for i, (p, _) in enumerate(ds.samples)}
    with pytest.raises(ConfigError, match=r"broken.png' is not a readable image"):
        ds[names["broken.png"]]
    with pytest.raises(ConfigError, match=r"huge.png' is too large to read safely .*250 pixels"):
        ds[names["huge.png"]]
    assert ds[names["ok.png"]][0].shape == (3, 8, 8)
