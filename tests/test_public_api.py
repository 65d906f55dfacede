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


def test_import_and_create_layer_stay_light():
    # Building a layer must not load the training engine, the networks (torchvision and its
    # datasets), yaml, tqdm, PIL or torch._dynamo: `import convattn` is on every user's path.
    import subprocess
    import sys

    # (torch itself imports tqdm, through torch.hub: only what convattn adds counts.)
    code = (
        "import sys, torch\n"
        "before = set(sys.modules)\n"
        "import convattn; convattn.create_attn('se', 16); convattn.create_attn('cbam', 16)\n"
        "heavy = ('convattn.engine', 'convattn.models', 'convattn.data', 'convattn.viz', 'convattn.bench',\n"
        "         'torchvision', 'yaml', 'tqdm', 'PIL', 'matplotlib', 'torch._dynamo')\n"
        "print(sorted(m for m in set(sys.modules) - before if m.split('.')[0] in heavy or m.startswith(heavy)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_lazy_names_resolve_and_are_listed():
    assert convattn.TrainConfig.__name__ == "TrainConfig"
    from convattn import create_model, load_checkpoint, train  # noqa: F401

    listed = dir(convattn)
    for name in convattn.__all__:
        assert name in listed
    assert "engine" in listed and "models" in listed
    assert convattn.engine.train is convattn.train
