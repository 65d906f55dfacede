"""Localisation metrics on maps and windows with known answers, and ``localization`` on hand-built models."""

import pytest
import torch
from torch import nn

from convattn.eval import (
    box_mask,
    box_share,
    energy_in_box,
    localization,
    pointing_game,
    to_image_frame,
    window_corners,
    window_scores,
)
from convattn.exceptions import ConfigError
from convattn.registry import create_attn
from convattn.layers._recording import RecordsAttention


def test_box_mask_takes_pixels_whose_centre_is_inside():
    boxes = torch.tensor([[2.0, 1.0, 5.0, 4.0], [0.0, 0.0, 10.0, 10.0], [2.4, 1.0, 2.6, 2.0]])
    m = box_mask(boxes, (10, 10))
    assert m[0].nonzero().tolist() == [[r, c] for r in (1, 2, 3) for c in (2, 3, 4)]
    assert m[1].all()
    assert m[2].nonzero().tolist() == [[1, 2]]  # the centre (2.5, 1.5) lies in a thin box
    assert box_share(boxes, (10, 10)).tolist() == [0.09, 1.0, 0.01]


def test_pointing_game_hits_misses_and_tolerance():
    box = torch.tensor([[100.0, 100.0, 120.0, 120.0]] * 4)
    maps = torch.zeros(4, 224, 224)
    maps[0, 110, 110] = 1.0  # inside
    maps[1, 110, 134] = 1.0  # centre x = 134.5: 14.5 px right of the box, within 15 px
    maps[2, 110, 135] = 1.0  # 15.5 px: a miss
    maps[3, 130, 130] = 1.0  # diagonal: hypot(10.5, 10.5) = 14.85 px, within
    assert pointing_game(maps, box).tolist() == [1.0, 1.0, 0.0, 1.0]
    assert pointing_game(maps, box, tolerance=0.0).tolist() == [1.0, 0.0, 0.0, 0.0]
    # the tolerance scales with the shorter side: 15/224 of 112 px is 7.5 px
    small = torch.zeros(1, 112, 150)
    small[0, 50, 67] = 1.0  # centre 67.5: 7.5 px right of a box ending at x = 60
    assert pointing_game(small, torch.tensor([[40.0, 40.0, 60.0, 60.0]])).tolist() == [1.0]
    small[0, 50, 67], small[0, 50, 68] = 0.0, 1.0
    assert pointing_game(small, torch.tensor([[40.0, 40.0, 60.0, 60.0]])).tolist() == [0.0]


def test_pointing_game_shares_ties_so_a_constant_map_scores_chance():
    box = torch.tensor([[2.0, 2.0, 4.0, 4.0]])
    maps = torch.zeros(1, 10, 10)
    maps[0, 3, 3] = maps[0, 8, 8] = 2.0  # one tied maximum inside, one far outside
    assert pointing_game(maps, box, tolerance=0.0).tolist() == [0.5]
    const = torch.full((1, 10, 10), 0.3)
    assert pointing_game(const, box, tolerance=0.0).tolist() == [4 / 100]
    # tolerance 1 px on a 10 px side (0.1): the 4 inside + the 12 pixels whose centre is 0.5 px from an edge
    # (the 4 diagonal neighbours are hypot(0.5, 0.5) = 0.71 px away, also within)
    assert pointing_game(const, box, tolerance=0.1).tolist() == [(4 + 8 + 4) / 100]


def test_energy_in_box():
    box = torch.tensor([[0.0, 0.0, 2.0, 2.0]] * 3)
    maps = torch.zeros(3, 4, 4)
    maps[0, 0, 0], maps[0, 1, 1], maps[0, 3, 3] = 1.0, 2.0, 1.0  # 3 of 4 inside
    maps[1] = -1.0
    maps[1, 0, 0], maps[1, 3, 3] = 1.0, 3.0  # negatives count as 0: 1 of 4 inside
    assert energy_in_box(maps, box).tolist() == [0.75, 0.25, 0.25]  # no mass: the box's share (4 / 16)
    uniform = torch.ones(3, 4, 4)
    assert torch.equal(energy_in_box(uniform, box), box_share(box, (4, 4)))


def test_metrics_reject_bad_shapes():
    with pytest.raises(ConfigError, match=r"expected boxes of shape \(2, 4\), got \(1, 4\)"):
        pointing_game(torch.zeros(2, 4, 4), torch.zeros(1, 4))
    with pytest.raises(ConfigError, match=r"expected maps of shape \(B, H, W\)"):
        energy_in_box(torch.zeros(2, 1, 4, 4), torch.zeros(2, 4))


def _theta(*rows):
    return torch.tensor([rows], dtype=torch.float64).view(1, 2, 3)


def test_window_iou_energy_and_centre_exact():
    hw = (10, 10)
    # identity: the whole image; box the left half
    r = window_scores(_theta(1, 0, 0, 0, 1, 0), torch.tensor([[0.0, 0.0, 5.0, 10.0]]), hw)
    assert (r["iou"].item(), r["energy"].item(), r["pointing"].item()) == (0.5, 0.5, 1.0)
    # zoom 0.5 about the centre: window (2.5, 2.5)-(7.5, 7.5); box (5, 5)-(10, 10)
    r = window_scores(_theta(0.5, 0, 0, 0, 0.5, 0), torch.tensor([[5.0, 5.0, 10.0, 10.0]]), hw, tolerance=0.0)
    assert r["iou"].item() == pytest.approx(6.25 / 43.75, abs=1e-12)
    assert r["energy"].item() == pytest.approx(0.25, abs=1e-12) and r["pointing"].item() == 1.0
    # rotated by 45 degrees: the diamond (5, 0), (10, 5), (5, 10), (0, 5); box the top-left quarter
    theta = _theta(0.5, -0.5, 0, 0.5, 0.5, 0)
    assert window_corners(theta, hw)[0].tolist() == [[5.0, 0.0], [10.0, 5.0], [5.0, 10.0], [0.0, 5.0]]
    r = window_scores(theta, torch.tensor([[0.0, 0.0, 5.0, 5.0]]), hw)
    assert r["iou"].item() == pytest.approx(12.5 / (50 + 25 - 12.5), abs=1e-12)
    assert r["energy"].item() == pytest.approx(0.25, abs=1e-12)
    # a window away from the box: no overlap, centre far
    r = window_scores(_theta(0.2, 0, 0.7, 0, 0.2, 0.7), torch.tensor([[0.0, 0.0, 3.0, 3.0]]), hw)
    assert (r["iou"].item(), r["energy"].item(), r["pointing"].item()) == (0.0, 0.0, 0.0)


def test_to_image_frame_inverts_the_transformer():
    ident = torch.tensor([[[1.0, 0, 0], [0, 1.0, 0]]])
    m = torch.rand(1, 8, 8)
    torch.testing.assert_close(to_image_frame(m, ident), m, atol=1e-5, rtol=0)
    # a zoom by 0.5: the window [2, 6] holds the centres of pixels 2..5; pixel 1's centre reads the
    # output frame at -1.5 px, beyond the half-pixel that bilinear sampling reaches into the zero padding
    zoom = torch.tensor([[[0.5, 0, 0], [0, 0.5, 0]]])
    back = to_image_frame(torch.ones(1, 8, 8), zoom)
    profile = torch.tensor([0.0, 0, 1, 1, 1, 1, 0, 0])
    torch.testing.assert_close(back[0], profile[:, None] * profile[None, :], atol=1e-5, rtol=0)


class EmitInput(RecordsAttention):
    """Passes its input through and records its channel mean as a spatial map."""

    def forward(self, x):
        if self.recording:
            self.emit("spatial", x.mean(1, keepdim=True))
        return x


def _square_batch(n=4, hw=(24, 24)):
    """Images that are 0 but for a bright 4x4 square; the box is that square."""
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(n, 1, *hw)
    boxes = torch.zeros(n, 4)
    for i in range(n):
        x0, y0 = (int(v) for v in torch.randint(2, hw[0] - 6, (2,), generator=g))
        x[i, 0, y0:y0 + 4, x0:x0 + 4] = 1.0
        x[i, 0, y0 + 1, x0 + 2] = 2.0  # a unique maximum
        boxes[i] = torch.tensor([x0, y0, x0 + 4, y0 + 4])
    return x, torch.arange(n) % 3, boxes


def _classifier(c=1, k=3):
    return [nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, k)]


def test_localization_scores_a_map_that_is_the_object():
    torch.manual_seed(0)
    net = nn.Sequential(EmitInput(), *_classifier())
    x, y, boxes = _square_batch()
    r = localization(net, [(x[:2], y[:2], boxes[:2]), (x[2:], y[2:], boxes[2:])])
    assert r["images"] == 4 and r["image_size"] == [24, 24]
    assert r["maps"]["0:spatial"]["pointing"] == 1.0 and r["maps"]["0:spatial"]["energy"] == 1.0
    assert r["box_share"] == pytest.approx(16 / 576)
    assert r["tolerance_px"] == pytest.approx(24 * 15 / 224)
    cam = r["maps"]["Grad-CAM"]
    assert cam["kind"] == "grad-cam" and cam["layer"] == "1" and 0 <= cam["energy"] <= 1
    assert net.training  # restored
    with pytest.raises(ConfigError, match="with_boxes"):
        localization(net, [(x, y)], cam=False)


def test_localization_reads_maps_after_a_transformer_in_the_image_frame():
    """A fixed zoom onto the image's top-left quarter; the map drawn in the zoomed frame is carried back."""
    stn = create_attn("stn", 1, transform="attention", out_size=(24, 24))
    with torch.no_grad():
        stn.fc_theta.bias.copy_(torch.tensor([0.5, -0.5, -0.5]))  # s, tx, ty: window (0, 0)-(12, 12)
    net = nn.Sequential(stn, EmitInput(), *_classifier()).eval()
    x, y, boxes = _square_batch(hw=(24, 24))
    inside = (boxes[:, 2] <= 12) & (boxes[:, 3] <= 12)
    r = localization(net, [(x, y, boxes)], cam=False)
    win = r["maps"]["0:window"]
    expected = window_scores(torch.tensor([[[0.5, 0, -0.5], [0, 0.5, -0.5]]]).expand(4, 2, 3), boxes, (24, 24))
    assert win["iou"] == pytest.approx(expected["iou"].mean().item())
    assert win["energy"] == pytest.approx(expected["energy"].mean().item())
    assert win["pointing"] == pytest.approx(expected["pointing"].mean().item())
    spatial = r["maps"]["1:spatial"]
    assert spatial["frame"] == "0"
    # squares inside the window are found in the image frame; the others are out of view
    per = []
    for i in range(4):
        per.append(localization(net, [(x[i:i + 1], y[i:i + 1], boxes[i:i + 1])], cam=False)["maps"]["1:spatial"])
    assert inside.any() and not inside.all()
    for i in range(4):
        if inside[i]:  # bilinear sampling there and back blurs the square's edge a little
            assert per[i]["pointing"] == 1.0 and per[i]["energy"] > 0.8


def test_self_attention_is_averaged_over_queries():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), create_attn("non_local", 8), *_classifier(8))
    x, y, boxes = _square_batch(2, (12, 12))
    r = localization(net, [(x, y, boxes)], cam=False)
    (name, m), = r["maps"].items()
    assert name == "1" and m["kind"] == "query" and 0 <= m["energy"] <= 1 and m["images"] == 2


def test_aacn_heads_are_scored_per_stage():
    from convattn.models import create_model

    torch.manual_seed(0)
    net = create_model("aacn", num_classes=3, in_chans=1)
    x, y, boxes = _square_batch(2, (24, 24))
    r = localization(net, [(x, y, boxes)])
    assert [k for k, m in r["maps"].items() if m["kind"] == "spatial"] == ["heads.stage1", "heads.stage2", "heads.stage3"]
    assert r["maps"]["Grad-CAM"]["images"] == 2
