"""convattn.viz: map interpretation, Grad-CAM layer choice, and files written for a trained run."""

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
    find_cam_layer,
    grad_cam,
    interpret_maps,
    plot_attention,
    plot_curves,
    query_map,
    read_metrics,
    to_display,
    visualize_run,
)


def _png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_query_map_picks_the_query_row():
    h, w = 3, 4
    attn = torch.zeros(h * w, h * w)
    attn[1 * w + 2, 2 * w + 0] = 1.0  # query (1, 2) attends to key (2, 0)
    m = query_map(attn, (h, w), (1, 2))
    assert m.shape == (3, 4) and np.unravel_index(m.argmax(), m.shape) == (2, 0)
    # pooled keys (non-local subsampling): 12 queries, 6 keys -> a (h/2-ish) grid with the aspect kept
    pooled = torch.rand(h * w, 6)
    assert query_map(pooled, (h, w), (0, 0)).shape in {(2, 3), (3, 2)}


def test_interpret_maps_kinds():
    B, C, h, w = 2, 6, 3, 5
    maps = {
        "a": torch.rand(B, C),
        "b:spatial": torch.rand(B, 1, h, w),
        "c": torch.rand(B, h * w, h * w),
        "d": torch.rand(B, C, C),
        "e:theta": torch.rand(B, 2, 3),
        "f": torch.rand(B, 4, h * w, h * w),
    }
    shapes = {k: (B, C, h, w) for k in "abcdef"}
    kinds = {m.key: m.kind for m in interpret_maps(maps, shapes, image_hw=(12, 20))}
    assert kinds == {"a": "channel", "b:spatial": "spatial", "c": "query", "d": "matrix", "e:theta": "theta",
                     "f": "query"}
    q = [m for m in interpret_maps(maps, shapes, image_hw=(12, 20), query=(0, 19)) if m.key == "c"][0]
    assert q.query == (0, 4) and q.data.shape == (B, h, w)  # input pixel (0, 19) -> grid cell (0, 4)


def test_to_display_undoes_normalisation():
    img = torch.rand(1, 3, 4, 5)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    x = (img - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    np.testing.assert_allclose(to_display(x, mean, std)[0], img[0].permute(1, 2, 0).numpy(), atol=1e-6)
    assert to_display(torch.randn(2, 1, 4, 4)).shape == (2, 4, 4, 3)


def test_cam_layer_found_automatically():
    resnet = create_model("resnet18", num_classes=5, attention="se")
    assert find_cam_layer(resnet, torch.randn(1, 3, 64, 64)) == "layer4"
    cnn = create_model("simple_cnn", num_classes=5, in_chans=1, attention="cbam")
    name = find_cam_layer(cnn, torch.randn(1, 1, 28, 28))
    assert "attn" not in name  # never a convolution inside an attention gate
    assert isinstance(dict(cnn.named_modules())[name], nn.Module)


def test_grad_cam_handles_dict_outputs():
    class DictNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1))
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return {"logits": self.head(self.features(x).mean((2, 3))), "maps": x}

    cams, layer = grad_cam(DictNet(), torch.randn(2, 1, 10, 12))
    assert layer == "features"
    assert cams.shape == (2, 10, 12) and cams.min() >= 0 and cams.max() <= 1
    with pytest.raises(convattn.ConfigError, match="no module"):
        grad_cam(DictNet(), torch.randn(1, 1, 8, 8), target_layer="nope")


def test_plot_attention_and_curves_return_figures():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), convattn.create_attn("cbam", 16),
                        convattn.create_attn("self_attn", 16))
    figs = plot_attention(net, torch.randn(2, 3, 9, 7))
    assert len(figs) == 2 and len(figs[0].axes) == 4  # input, channel, spatial, self-attention query
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
    assert names == ["attention_000.png", "attention_001.png", "curves.png"]
    assert sorted(p.name for p in out.iterdir()) == names
    for p in paths:
        w, h = _png_size(p)
        assert w >= 300 and h >= 200 and p.stat().st_size > 5_000
    # input + Grad-CAM + 3 CBAM blocks x (channel, spatial) panels -> a wide figure of two rows
    w, h = _png_size(out / "attention_000.png")
    assert w > 1000 and h > 400


@pytest.mark.slow
def test_visualize_run_image_files_and_stn(cbam_run, tmp_path):
    files = []
    for i in range(2):
        p = tmp_path / f"img{i}.png"
        Image.fromarray((np.random.rand(40, 50) * 255).astype(np.uint8)).save(p)
        files.append(p)
    paths = visualize_run(cbam_run / "best.pt", images=files, out_dir=tmp_path / "files", cam=False)
    assert [p.name for p in paths] == ["attention_000.png", "attention_001.png", "curves.png"]

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
    assert len(list(out.glob("attention_*.png"))) == 2
    assert main(["viz", str(tmp_path / "no_such_run"), "--out", str(out)]) == 2
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["viz", str(cbam_run), "--out", str(out), "--query", "middle"])
