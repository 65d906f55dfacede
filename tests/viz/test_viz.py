"""convattn.viz: figures, the names it re-exports from convattn.maps, and files written for a trained run."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import convattn
from convattn.cli import main
from convattn.models import create_model
from convattn.viz import (
    plot_attention,
    plot_curves,
    read_metrics,
    to_display,
    visualize_run,
)


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_viz_reexports_the_recorder_names():
    import convattn.maps
    import convattn.viz

    for name in ("AttentionMap", "LogitsOnly", "collect_attention", "find_cam_layer", "find_transformers",
                 "grad_cam", "interpret_maps", "query_map"):
        assert getattr(convattn.viz, name) is getattr(convattn.maps, name)


def test_transformer_outputs_reads_a_recording():
    from convattn.maps import record_maps
    from convattn.viz import transformer_outputs

    torch.manual_seed(0)
    net = nn.Sequential(convattn.create_attn("stn", 1), nn.Conv2d(1, 4, 3))
    x = torch.randn(2, 1, 16, 16)
    (out,) = transformer_outputs(net, x)
    assert out["path"] == "0" and out["grid"].shape == (2, 16, 16, 2) and torch.equal(out["input"], x)
    torch.testing.assert_close(out["theta"], net[0].theta(x))
    torch.testing.assert_close(out["output"], net[0](x))
    (again,) = transformer_outputs(net, x, recording=record_maps(net, x))
    torch.testing.assert_close(again["grid"], out["grid"])


def test_to_display_undoes_normalisation():
    img = torch.rand(1, 3, 4, 5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    np.testing.assert_allclose(to_display(x, mean, std)[0], img[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert to_display(torch.randn(2, 1, 4, 4)).shape == (2, 4, 4, 3)


def test_plot_attention_and_curves_return_figures():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), convattn.create_attn("cbam", 16),
                        convattn.create_attn("self_attn", 16))
    figs = plot_attention(net, torch.randn(2, 3, 9, 7))
    panels = [ax for ax in figs[0].axes if ax.get_label() != "<colorbar>"]
    assert len(figs) == 2 and len(panels) == 4  # input, channel, spatial, self-attention query
    assert len(figs[0].axes) == 6  # + colour bars of the spatial and the query heat maps
    fig = plot_curves([{"epoch": 1, "train_loss": 2.0, "val_acc": 0.1}, {"epoch": 2, "train_loss": 1.0, "val_acc": 0.4}])
    loss_ax, acc_ax = fig.axes
    assert len(loss_ax.lines) == 1 and len(acc_ax.lines) == 1
    with pytest.raises(convattn.ConfigError):
        plot_curves([])


def test_read_metrics_skips_broken_lines(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"epoch": 1, "val_acc": 0.5}\n{"epoch": 2, "val_a')
    assert read_metrics(tmp_path) == [{"epoch": 1, "val_acc": 0.5}]
    assert read_metrics(tmp_path / "missing") == []


@pytest.mark.slow
def test_visualize_run_from_run_dir(cbam_run, tmp_path):
    out = tmp_path / "viz"
    paths = visualize_run(cbam_run, count=2, out_dir=out)
    names = sorted(p.name for p in paths)
    assert names == ["curves.png", "test_000_attention.png", "test_000_cam.png", "test_001_attention.png",
                     "test_001_cam.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    for p in paths:
        w, h = _png_size(p)
        assert w >= 300 and h >= 200 and p.stat().st_size > 5_000
    # input + 3 CBAM blocks x (channel, spatial) panels -> a wide figure of two rows
    w, h = _png_size(out / "test_000_attention.png")
    assert w > 1000 and h > 400


@pytest.mark.slow
def test_visualize_run_image_files_and_stn(cbam_run, tmp_path):
    files = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.rand(40, 50) * 255).astype(np.uint8)).save(p)
        files.append(p)
    paths = visualize_run(cbam_run / "best.pt", images=files, out_dir=tmp_path / "files", cam=False)
    assert [p.name for p in paths] == ["img0_attention.png", "img1_attention.png", "curves.png"]

    stn_model = create_model("stn_cnn", num_classes=10, in_chans=1)
    paths = visualize_run(stn_model, images=torch.randn(2, 1, 28, 28), out_dir=tmp_path / "stn")
    stn_files = [p for p in paths if p.name.startswith("stn_")]
    assert len(stn_files) == 1
    w, h = _png_size(stn_files[0])
    assert w > 600 and h > 400  # 3 panels x 2 rows


@pytest.mark.slow
def test_cli_viz(cbam_run, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["viz", str(cbam_run), "--count", "2", "--out", str(out), "--no-cam", "--query", "10,10"]) == 0
    assert len(list(out.glob("test_*_attention.png"))) == 2 and not list(out.glob("*_cam.png"))
    assert main(["viz", str(tmp_path / "no_such_run"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["viz", str(cbam_run), "--out", str(out), "--query", "middle"])
