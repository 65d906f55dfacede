"""The demo's variants (``convattn.experiments.demo``): their configs and models."""

import pytest

from convattn.experiments import demo
from convattn.exceptions import ConfigError


def test_configs_share_the_recipe(tmp_path):
    chains = {v: demo.make_configs(v, out=tmp_path, epochs=6, train_size=100) for v in demo.VARIANTS}
    cfgs = {v: chain[-1] for v, chain in chains.items()}
    assert {v: (c.model, c.attention) for v, c in cfgs.items()} == {
        "plain": ("simple_cnn", None), "cbam": ("simple_cnn", "cbam"), "stn": ("stn_cnn", None), "aacn": ("aacn", None)}
    for v, c in cfgs.items():
        assert c.dataset == "cluttered-digits" and c.train_size == 100 and c.out == str(tmp_path / v / "seed0")
        assert (c.optimizer, c.lr, c.schedule, c.batch_size) == ("adamw", 5e-3, "cosine", 32)  # the models' recipe
    assert [c.epochs for v, c in cfgs.items() if v != "aacn"] == [6, 6, 6]
    # AACN in the same budget: the plain backbone for 4 epochs (a run of its own, in compare's plain-run folder),
    # then the staged recipe from it, attention / decision alternating, for 2
    plain, aacn = chains["aacn"]
    assert (plain.model, plain.attention, plain.epochs, plain.out) == (
        "simple_cnn", None, 4, str(tmp_path / "_plain" / "e4-seed0"))
    assert plain.to_dict() == {**chains["plain"][0].to_dict(), "epochs": 4, "out": plain.out}
    assert (aacn.recipe, aacn.stage_mode, aacn.epochs, aacn.init_from) == ("staged", "alternate", 2, plain.out)
    assert [(s["name"], s["epochs"]) for s in aacn.stages] == [("attention", 1), ("decision", 1)]
    with pytest.raises(ConfigError, match="unknown demo variant"):
        demo.make_configs("se", out=tmp_path)
    with pytest.raises(ConfigError, match=r"variant aacn starts from a plain run: it needs epochs >= 2 .*, got 1"):
        demo.make_configs("aacn", out=tmp_path, epochs=1)
    from convattn.engine.recipes import aacn_feature_epochs

    assert [aacn_feature_epochs(e) for e in (2, 3, 6, 12)] == [1, 2, 4, 8]


def test_variant_models_build_with_their_options(tmp_path):
    """CBAM starts as the identity; the STN's localisation group exists for its lr multiplier."""
    import torch

    from convattn.models import create_model

    (cbam,) = demo.make_configs("cbam", out=tmp_path / "c")
    net = create_model(cbam.model, num_classes=10, in_chans=1, attention=cbam.attention, **cbam.model_kwargs)
    plain = create_model("simple_cnn", num_classes=10, in_chans=1)
    plain.load_state_dict({k: v for k, v in net.state_dict().items() if ".attn." not in k})
    x = torch.randn(2, 1, 20, 18)
    net.eval(), plain.eval()
    torch.testing.assert_close(net(x), plain(x))

    (stn,) = demo.make_configs("stn", out=tmp_path / "s")
    net = create_model(stn.model, num_classes=10, in_chans=1, **stn.model_kwargs)
    assert set(stn.lr_mult) <= set(net.param_groups())
    assert net.transformed(torch.randn(1, 1, 60, 60)).shape[-2:] == tuple(stn.model_kwargs["out_size"])


def test_kernels_are_built_by_the_run_started_before():
    """Two at a time, the run started just before CBAM builds CBAM's kernels; one at a time, none are prepared."""
    order = demo.start_order(["aacn", "cbam", "plain", "stn"])
    assert order == ["stn", "plain", "cbam", "aacn"]
    builds = demo.kernel_builds(order, jobs=2)
    assert list(builds) == ["plain"]
    assert builds["plain"].func is demo.build_kernels and builds["plain"].args == (("convattn_cbam",),)
    assert demo.kernel_builds(["cbam", "aacn"], jobs=2) == {} and demo.kernel_builds(order, jobs=1) == {}
