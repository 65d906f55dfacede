import torch
from torch import nn

import convattn


def test_nested_paths_overwrite_and_cleanup():
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Sequential(convattn.create_attn("se", 16, rd_ratio=0.5)))
    x = torch.randn(2, 3, 6, 6)
    with convattn.record_attention(net) as maps:
        net(x)
        first = maps["1.0"].clone()
        net(torch.randn(2, 3, 6, 6))
    assert list(maps) == ["1.0"]
    assert not torch.equal(first, maps["1.0"])  # a later pass overwrites
    with convattn.record_attention(net) as other:
        pass
    assert other == {}
    net(x)  # outside the context nothing is stored
    assert list(maps) == ["1.0"] and not net[1][0].recording


def test_two_models_record_separately():
    a = nn.Sequential(convattn.create_attn("se", 8))
    b = nn.Sequential(convattn.create_attn("se", 8))
    x = torch.randn(1, 8, 3, 3)
    with convattn.record_attention(a) as ma, convattn.record_attention(b) as mb:
        a(x)
    assert list(ma) == ["0"] and mb == {}


def test_record_attention_rejects_non_modules():
    try:
        with convattn.record_attention("model"):
            pass
    except TypeError as e:
        assert "nn.Module" in str(e)
    else:
        raise AssertionError("expected TypeError")


def test_data_parallel_replicas_record_and_paths_match_the_bare_model():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), convattn.create_attn("cbam", 8, rd_ratio=0.5))
    x = torch.randn(2, 3, 6, 6)
    dp = nn.DataParallel(net)  # on a CPU-only machine it runs the module itself
    with convattn.record_attention(dp) as maps:
        dp(x)
        # what DataParallel does per device: a shallow replica sharing the layer's state
        replica = net[1]._replicate_for_data_parallel()
        replica(torch.randn(1, 8, 6, 6))
    assert sorted(maps) == ["1:channel", "1:spatial"]
    assert maps["1:spatial"].shape == (1, 1, 6, 6)  # the replica's pass overwrote the model's
    assert not net[1].recording  # (DataParallel drops its replicas after each forward)


def test_copies_never_inherit_recording(tmp_path):
    import copy
    import pickle

    net = nn.Sequential(convattn.create_attn("non_local", 8))
    x = torch.randn(1, 8, 4, 4)
    with convattn.record_attention(net) as maps:
        clone = copy.deepcopy(net)
        pickled = pickle.loads(pickle.dumps(net))
        clone(x)
        pickled(x)
        assert maps == {}  # the copies are not part of this recording
        net(x)
        assert list(maps) == ["0"]
    assert not clone[0].recording and not pickled[0].recording
    with convattn.record_attention(clone) as own:
        clone(x)
    assert list(own) == ["0"]


def test_distributed_data_parallel_paths(tmp_path):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), convattn.create_attn("se", 8))
        ddp = nn.parallel.DistributedDataParallel(net)
        with convattn.record_attention(ddp) as maps:
            ddp(torch.randn(2, 3, 5, 5)).sum().backward()
        assert list(maps) == ["1"] and maps["1"].shape[0] == 2
    finally:
        dist.destroy_process_group()
