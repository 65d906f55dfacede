"""viz on your own images: files and folders, class folders' true labels, output names, --layers,
colour bars, CAM methods and --target-class."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import convattn
import convattn.viz.run as viz_run
from convattn.cli import main
from convattn.viz.inputs import image_inputs, output_stems, parse_layers, parse_target_class, select_layers


def _png(path, seed=0, size=(40, 50)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray((rng.random(size) * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture
def class_folder(tmp_path):
    """FOLDER/3/{a,b}.png and FOLDER/7/{a,c}.png: class sub-folders named after the run's classes, a repeated stem."""
    root = tmp_path / "mine"
    for i, rel in enumerate(("3/a.png", "3/b.png", "7/a.png", "7/c.png")):
        _png(root / rel, seed=i)
    return root


@pytest.fixture
def figures(monkeypatch):
    """Every figure visualize_run saves, by file name."""
    saved = {}
    original = viz_run.save_figure

    def keep(fig, path, *a, **k):
        saved[path.name] = fig
        return original(fig, path, *a, **k)

    monkeypatch.setattr(viz_run, "save_figure", keep)
    return saved


def _panels(fig):
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def _colour_bars(fig):
    return [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]


def test_image_inputs_files_folders_and_class_folders(tmp_path, class_folder):
    flat = tmp_path / "flat"
    b, a = _png(flat / "b.png"), _png(flat / "a.png")
    (flat / "notes.txt").write_text("not an image")
    _png(flat / "deeper" / "ignored.png")
    single = _png(tmp_path / "single.png")
    got = image_inputs([flat, single, class_folder], ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"))
    assert [(i.path, i.label) for i in got] == [
        (a, None), (b, None), (single, None),
        (class_folder / "3/a.png", 3), (class_folder / "3/b.png", 3),
        (class_folder / "7/a.png", 7), (class_folder / "7/c.png", 7)]
    # no class names: still the files, no labels
    assert all(i.label is None for i in image_inputs([class_folder], None))
    with pytest.raises(convattn.ConfigError, match=r"sub-folders .* none of the run's classes \(cat, dog\)"):
        image_inputs([class_folder], ("cat", "dog"))
    with pytest.warns(UserWarning, match="name no class of the run.*: 7"):
        got = image_inputs([class_folder], ("3", "4"))
    assert [i.label for i in got] == [0, 0, None, None]
    with pytest.raises(convattn.DatasetNotFoundError, match="does not exist"):
        image_inputs([tmp_path / "missing.png"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(convattn.DatasetNotFoundError, match="holds no image files"):
        image_inputs([tmp_path / "empty"])


def test_output_stems_are_unique(tmp_path):
    paths = [tmp_path / "3/a.png", tmp_path / "7/a.png", tmp_path / "b c.png", tmp_path / "x/3/a.jpg"]
    assert output_stems(paths) == ["3_a", "7_a", "b_c", "3_a-2"]


def test_target_class_and_layer_globs():
    names = ("cat", "dog", "7")
    assert parse_target_class("dog", names, 3) == 1
    assert parse_target_class("7", names, 3) == 2  # a class name before an index
    assert parse_target_class("0", names, 3) == 0
    with pytest.raises(convattn.ConfigError, match=r"expects a class name \(cat, dog, 7\) or an index 0..2, got 'cow'"):
        parse_target_class("cow", names, 3)
    assert parse_layers(["layer4*,*:spatial", "stem"]) == ["layer4*", "*:spatial", "stem"]
    with pytest.raises(convattn.ConfigError, match="--layers expects"):
        parse_layers([","])
    keys = ["layer1.0.attn:channel", "layer1.0.attn:spatial", "layer4.1.attn:spatial", "stn"]
    assert select_layers(keys, ["layer4*"]) == ["layer4.1.attn:spatial"]
    assert select_layers(keys, ["*:spatial"]) == ["layer1.0.attn:spatial", "layer4.1.attn:spatial"]
    assert select_layers(keys, ["layer1.0.attn"]) == keys[:2]  # a module path picks all its maps
    assert select_layers(keys, None) == keys


@pytest.mark.slow
def test_cli_viz_class_folder_names_labels_layers_and_colour_bars(cbam_run, class_folder, tmp_path, figures, capsys):
    out = tmp_path / "out"
    assert main(["viz", str(cbam_run), "--images", str(class_folder), "--out", str(out)]) == 0
    stems = ["3_a", "b", "7_a", "c"]  # the folder's name only where two files share a stem
    expected = sorted([f"{s}_attention.png" for s in stems] + [f"{s}_cam.png" for s in stems] + ["curves.png"])
    assert sorted(p.name for p in out.iterdir()) == expected
    assert not list(out.glob("attention_*.png"))
    title = figures["b_attention.png"]._suptitle.get_text()
    assert title.startswith("3/b.png · true 3 · predicted ")  # the class folder, the true label, the prediction
    assert "true 7" in figures["7_a_cam.png"]._suptitle.get_text()
    every = figures["3_a_attention.png"]
    assert len(_panels(every)) == 7  # input + 3 CBAM blocks x (channel, spatial)
    assert len(_colour_bars(every)) == 3  # one per spatial heat map, labelled with what it shows
    assert {ax.get_ylabel() for ax in _colour_bars(every)} == {"attention weight"}
    cam = figures["3_a_cam.png"]
    assert len(_panels(cam)) == 2 and [ax.get_ylabel() for ax in _colour_bars(cam)] == ["Grad-CAM (0–1)"]

    figures.clear()
    assert main(["viz", str(cbam_run), "--images", str(class_folder / "3" / "a.png"), "--out", str(tmp_path / "l"),
                 "--no-cam", "--layers", "*:spatial"]) == 0
    assert sorted(figures) == ["a_attention.png", "curves.png"]
    spatial = figures["a_attention.png"]
    assert len(_panels(spatial)) == 4 and len(_colour_bars(spatial)) == 3
    assert all(ax.get_title().endswith(":spatial") for ax in _panels(spatial)[1:])
    figures.clear()
    key = _panels(every)[1].get_title()  # the first block's channel map, e.g. "stages.0.attn:channel"
    assert main(["viz", str(cbam_run), "--images", str(class_folder / "3" / "a.png"), "--out", str(tmp_path / "l"),
                 "--no-cam", "--layers", key, "--layers", "nothing*,*:spatial"]) == 0
    assert len(_panels(figures["a_attention.png"])) == 5
    capsys.readouterr()
    assert main(["viz", str(cbam_run), "--images", str(class_folder), "--out", str(tmp_path / "l"),
                 "--layers", "layer9*"]) == 2
    err = capsys.readouterr().err
    assert "--layers layer9* matches none of the recorded maps" in err and ":spatial" in err and err.count("\n") == 1


@pytest.mark.slow
def test_cli_viz_cam_methods_and_target_class(cbam_run, class_folder, tmp_path, figures, capsys):
    img = str(class_folder / "3" / "a.png")

    def cam_of(*flags):
        figures.clear()
        assert main(["viz", str(cbam_run), "--images", img, "--out", str(tmp_path / "c"), "--layers", "*:spatial",
                     *flags]) == 0
        fig = figures["a_cam.png"]
        return fig._suptitle.get_text(), np.asarray(_panels(fig)[1].images[0].get_array())

    title, grad = cam_of("--cam")  # the old spelling: on, Grad-CAM
    assert "Grad-CAM of class" in title
    title_pp, plus = cam_of("--cam", "gradcam++")
    assert "Grad-CAM++ of class" in title_pp and not np.allclose(plus, grad)
    title_eigen, eigen = cam_of("--cam", "eigencam")
    assert "Eigen-CAM of class" in title_eigen and not np.allclose(eigen, grad)
    predicted = title.split("predicted ")[1].split(" ")[0]
    other = "5" if predicted != "5" else "6"
    title_t, targeted = cam_of("--target-class", other)
    assert f"Grad-CAM of class {other} at" in title_t and not np.allclose(targeted, grad)
    capsys.readouterr()
    assert main(["viz", str(cbam_run), "--images", img, "--out", str(tmp_path / "c"), "--target-class", "cow"]) == 2
    assert "--target-class expects a class name (0, 1, 2" in capsys.readouterr().err
    assert main(["viz", str(cbam_run), "--images", img, "--out", str(tmp_path / "c"), "--no-cam",
                 "--target-class", "3"]) == 2
    with pytest.raises(SystemExit):
        main(["viz", str(cbam_run), "--images", img, "--cam", "gradcam+++"])


def test_a_big_network_figure_wraps_into_rows():
    from convattn.maps import AttentionMap
    from convattn.viz import attention_figure

    rng = np.random.default_rng(0)
    entries = [(AttentionMap(f"layer{i // 4 + 1}.{i % 4}.attn:{'spatial' if i % 2 else 'channel'}",
                             "spatial" if i % 2 else "channel",
                             rng.random((1, 7, 7)) if i % 2 else rng.random((1, 64))), 0) for i in range(16)]
    fig = attention_figure(rng.random((32, 32, 3)), entries, title="ResNet-18 + CBAM: 16 maps")
    panels = _panels(fig)
    assert len(panels) == 17 and len(_colour_bars(fig)) == 8
    rows = {ax.get_subplotspec().rowspan.start for ax in panels}
    cols = {ax.get_subplotspec().colspan.start for ax in panels}
    assert len(rows) == 4 and len(cols) == 5  # 5 panels a row, not 17 in one
