"""The names other code relies on stay importable from the top level."""

import torch

import convattn


def test_all_names_resolve():
    for name in convattn.__all__:
        assert getattr(convattn, name) is not None, name


def test_lazy_subpackages():
    assert convattn.bench.count_flops is not None
    assert convattn.viz.visualize_run is not None
    assert "cluttered-digits" in convattn.data.list_datasets()


def test_layer_into_model_round_trip():
    net = convattn.create_model("resnet20", num_classes=10)
    convattn.insert_attn(net, "cbam")
    with convattn.record_attention(net) as maps:
        out = net(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10)
    assert len(maps) == 2 * 9  # channel and spatial maps of 9 blocks
