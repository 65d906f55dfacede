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


def _lean(layer):
    """No context records ``layer``: the memory-lean path, nothing stored."""
    return layer.recording is False and "_attn_sink" not in layer.__dict__


def test_contexts_exiting_out_of_order_each_keep_their_maps_and_restore_every_layer():
    net = nn.Sequential(convattn.create_attn("se", 8), convattn.create_attn("non_local", 8))
    x1, x2, x3 = (torch.randn(2, 8, 4, 4) for _ in range(3))
    a, b = convattn.record_attention(net), convattn.record_attention(net)
    maps_a = a.__enter__()
    net(x1)
    maps_b = b.__enter__()
    net(x2)
    a.__exit__(None, None, None)  # A leaves first
    assert maps_a.keys() == maps_b.keys() == {"0", "1"}
    for key in maps_a:
        assert torch.equal(maps_a[key], maps_b[key])  # both saw the pass with x2
    seen_by_a = {k: v.clone() for k, v in maps_a.items()}
    assert all(m.recording for m in net)  # B still records
    net(x3)
    for key in maps_a:
        assert torch.equal(maps_a[key], seen_by_a[key])  # A's maps are A's
        assert not torch.equal(maps_b[key], seen_by_a[key])  # B got the new pass
    b.__exit__(None, None, None)
    assert all(_lean(m) for m in net)
    seen_by_b = {k: v.clone() for k, v in maps_b.items()}
    net(x1)
    assert all(torch.equal(maps_b[k], seen_by_b[k]) for k in maps_b)


def test_a_layer_switched_on_by_hand_stays_on_after_the_contexts():
    layer = convattn.create_attn("se", 8)
    layer.recording = True
    with convattn.record_attention(layer), convattn.record_attention(layer):
        pass
    assert layer.recording is True and "_attn_sink" not in layer.__dict__


def test_two_threads_record_their_own_passes_and_exit_in_any_order():
    import threading

    net = nn.Sequential(convattn.create_attn("se", 8), convattn.create_attn("non_local", 8))
    inputs = {"A": torch.randn(2, 8, 4, 4), "B": torch.randn(3, 8, 4, 4)}
    expected = {}
    for who, x in inputs.items():
        with convattn.record_attention(net) as maps:
            net(x)
        expected[who] = maps
    a_entered, b_entered, a_exited = threading.Event(), threading.Event(), threading.Event()
    got, errors = {}, []

    def thread_a():
        try:
            with convattn.record_attention(net) as maps:
                a_entered.set()
                b_entered.wait(10)
                net(inputs["A"])
            got["A"] = maps
        except BaseException as e:
            errors.append(e)
        finally:
            a_exited.set()

    def thread_b():
        try:
            a_entered.wait(10)
            with convattn.record_attention(net) as maps:
                b_entered.set()
                a_exited.wait(10)  # A exits while B is open
                assert all(m.recording for m in net)
                net(inputs["B"])
            got["B"] = maps
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=thread_a), threading.Thread(target=thread_b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors
    for who in ("A", "B"):
        assert got[who].keys() == expected[who].keys()
        for key in got[who]:
            torch.testing.assert_close(got[who][key], expected[who][key])  # its own thread's pass only
    assert all(_lean(m) for m in net)


def test_a_thread_without_a_context_stores_nothing():
    import threading

    layer = convattn.create_attn("se", 8)
    with convattn.record_attention(layer) as maps:
        t = threading.Thread(target=layer, args=(torch.randn(2, 8, 3, 3),))
        t.start()
        t.join()
        assert maps == {}
        layer(torch.randn(1, 8, 3, 3))
        assert list(maps) == ["SqueezeExcite"] and maps["SqueezeExcite"].shape[0] == 1
