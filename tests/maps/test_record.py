"""convattn.maps.record: one recorded pass gives maps, input shapes, the order layers ran, transformers and θ."""

import torch
from torch import nn

import convattn
from convattn.maps import collect_attention, find_transformers, record_maps


class FixedZoom(nn.Module):
    """A spatial transformer that records nothing: a fixed zoom by 0.5 about the centre."""

    def theta(self, x):
        return x.new_tensor([[0.5, 0, 0], [0, 0.5, 0]]).expand(x.shape[0], 2, 3)

    def sampling_grid(self, x, theta=None):
        theta = self.theta(x) if theta is None else theta
        return nn.functional.affine_grid(theta, list(x.shape), align_corners=False)

    def forward(self, x):
        return nn.functional.grid_sample(x, self.sampling_grid(x), align_corners=False)


def _net():
    torch.manual_seed(0)
    return nn.Sequential(convattn.create_attn("stn", 1), nn.Conv2d(1, 8, 3, padding=1), convattn.create_attn("cbam", 8),
                         FixedZoom(), convattn.create_attn("se", 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 3))


def test_record_maps_gives_maps_shapes_order_and_output():
    net = _net().train()
    x = torch.randn(2, 1, 12, 10)
    rec = record_maps(net, x, watch=["1"])
    assert sorted(rec.maps) == ["0:theta", "2:channel", "2:spatial", "4"]
    assert rec.shapes == {"0": (2, 1, 12, 10), "1": (2, 1, 12, 10), "2": (2, 8, 12, 10), "4": (2, 8, 12, 10)}
    assert rec.started["0"] < rec.started["1"] < rec.started["2"] < rec.started["4"]
    assert rec.output.shape == (2, 3)
    assert net.training and not any(m.recording for m in net.modules() if hasattr(m, "recording"))
    maps, shapes, output = collect_attention(net, x)
    assert sorted(maps) == sorted(rec.maps) and shapes == {k: v for k, v in rec.shapes.items() if k != "1"}
    torch.testing.assert_close(output, rec.output)


def test_record_maps_gives_transformers_and_their_frames():
    net = _net()
    x = torch.randn(2, 1, 12, 10)
    rec = record_maps(net, x)
    assert [p for p, _ in find_transformers(net)] == ["0", "3"] and sorted(rec.transformers) == ["0", "3"]
    stn, zoom = rec.transformers["0"], rec.transformers["3"]
    assert stn.on_image and not zoom.on_image and stn.order < zoom.order
    assert torch.equal(stn.input, x) and stn.module is net[0]
    torch.testing.assert_close(stn.theta, rec.maps["0:theta"])
    torch.testing.assert_close(stn.output, net[0].eval()(x))
    # a transformer that records nothing: θ from its theta()
    torch.testing.assert_close(zoom.theta, torch.tensor([[[0.5, 0, 0], [0, 0.5, 0]]]).expand(2, 2, 3))
    # maps after the image's transformer are in its output frame; one deeper in the network is not undone
    assert rec.frame_of("0") is None and rec.frame_of("2") == "0" and rec.frame_of("4") == "0"
    assert rec.frame_of("not a layer") is None


def test_record_maps_names_paths_of_the_wrapped_network():
    net = _net()
    rec = record_maps(nn.DataParallel(net), torch.randn(2, 1, 12, 10))
    assert sorted(rec.maps) == ["0:theta", "2:channel", "2:spatial", "4"]
    assert sorted(rec.shapes) == ["0", "2", "4"] and sorted(rec.transformers) == ["0", "3"]
