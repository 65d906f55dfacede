"""convattn.bench: FLOP counts against textbook formulas, timing/memory consistency, tables, CLI."""

from __future__ import annotations

import csv
import json

import pytest
import torch
from torch import nn

import convattn
from convattn.bench import bench_layers, count_flops, count_params, measure_module, peak_memory, write_rows
from convattn.bench.tables import format_table
from convattn.cli import main
from convattn.layers.functional import attention


def test_conv3x3_flops_textbook():
    B, Cin, Cout, H, W = 2, 5, 7, 6, 9
    conv = nn.Conv2d(Cin, Cout, 3, padding=1, bias=False)
    assert count_flops(conv, torch.randn(B, Cin, H, W)) == 2 * B * Cout * H * W * Cin * 9


def test_linear_and_backward_flops():
    fc = nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8)
    assert count_flops(fc, x) == 2 * 3 * 8 * 4
    # backward of a layer whose input needs no gradient: only the weight gradient (another matmul)
    assert count_flops(fc, x, backward=True) == 2 * (2 * 3 * 8 * 4)


def test_sdpa_counted_as_two_matmuls_and_elementwise_not_counted():
    B, h, N, d = 2, 3, 10, 4
    q, k, v = (torch.randn(B, h, N, d) for _ in range(3))

    class Attn(nn.Module):
        def forward(self, q, k, v):
            return attention(q, k, v)[0]

    assert count_flops(Attn(), (q, k, v)) == 4 * B * h * N * N * d

    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x) + x.mean((2, 3), keepdim=True)

    assert count_flops(Gate(), torch.randn(2, 4, 5, 5)) == 0


def test_measure_module_numbers_consistent():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    x = torch.randn(3, 4, 8, 8)
    r = measure_module(conv, x, repeats=3, warmup=1)
    assert r["params"] == count_params(conv) == 4 * 4 * 9 + 4
    assert r["flops"] == 2 * 3 * 4 * 8 * 8 * 4 * 9
    assert 0 < r["latency_min_ms"] <= r["latency_ms"] <= r["latency_max_ms"]
    assert r["throughput"] == pytest.approx(3 / (r["latency_ms"] / 1e3))
    # inference output: one (3, 4, 8, 8) float tensor at least
    assert r["peak_memory"] >= 3 * 4 * 8 * 8 * 4
    assert r["memory_method"] == "tensor-tracker"
    t = measure_module(conv, x, train=True, repeats=2, warmup=0)
    assert t["mode"] == "train" and t["flops"] > r["flops"]
    assert conv.weight.grad is None  # grads cleared, module mode restored
    assert conv.training


def test_peak_memory_tracks_frees():
    mib = 2**20

    def sequential():
        for _ in range(3):
            a = torch.empty(mib // 4)  # 1 MiB, freed before the next
            a.fill_(1.0)
            del a
        return None

    def together():
        return [torch.ones(mib // 4) for _ in range(3)]

    seq, method = peak_memory(sequential)
    tog, _ = peak_memory(together)
    assert method == "tensor-tracker"
    assert mib <= seq < 2 * mib
    assert 3 * mib <= tog < 4 * mib


def test_peak_memory_fused_attention_below_explicit():
    q = k = v = torch.randn(1, 1, 1024, 16)
    fused, _ = peak_memory(lambda: attention(q, k, v)[0])
    explicit, _ = peak_memory(lambda: attention(q, k, v, need_weights=True))
    assert explicit >= 1024 * 1024 * 4  # the N x N matrix
    assert fused < explicit / 4


def test_bench_layers_rows_and_overhead():
    rows = bench_layers("se,not_a_layer", channels=8, size=6, batch=2, repeats=2, warmup=0)
    assert [(r["layer"], r["impl"]) for r in rows] == [("conv3x3", "torch"), ("se", "convattn"), ("not_a_layer", "convattn")]
    base, se, missing = rows
    assert base["flops"] == 2 * 2 * 8 * 6 * 6 * 8 * 9
    assert se["params"] == count_params(convattn.create_attn("se", 8))
    assert se["vs_conv3x3"] == pytest.approx(se["fwd_ms"] / base["fwd_ms"])
    assert se["fwdbwd_ms"] > 0 and se["train_mem"] > 0
    assert "not registered" in missing["note"]
    assert "not_a_layer" in format_table(rows)


def test_bench_layers_compare_timm_same_config():
    pytest.importorskip("timm")
    rows = bench_layers(["se"], channels=16, size=6, batch=2, repeats=2, warmup=0, train=False, memory=False)
    assert len(rows) == 2
    rows = bench_layers(["se"], channels=16, size=6, batch=2, repeats=2, warmup=0, train=False, memory=False,
                        compare="timm")
    ours, theirs = rows[1], rows[2]
    assert theirs["impl"] == "timm" and theirs["note"] == "SEModule"
    assert ours["params"] == theirs["params"]  # same reduction settings
    assert ours["flops"] == theirs["flops"]
    assert ours["vs_timm"] == pytest.approx(ours["fwd_ms"] / theirs["fwd_ms"])


def test_bench_layers_bad_args():
    with pytest.raises(convattn.ConfigError, match="dtype"):
        bench_layers("se", dtype="int8")
    with pytest.raises(convattn.ConfigError, match="compare"):
        bench_layers("se", compare="keras")


def test_write_rows_atomic_formats(tmp_path):
    rows = [{"layer": "a", "params": 10, "fwd_ms": 1.5, "vs_timm": None}, {"layer": "b", "params": 20, "note": "x"}]
    paths = write_rows(rows, csv_path=tmp_path / "t.csv", json_path=tmp_path / "sub/t.json",
                       markdown_path=tmp_path / "t.md", meta={"size": 56})
    assert len(paths) == 3
    with open(tmp_path / "t.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["layer"] for r in got] == ["a", "b"] and got[1]["params"] == "20"
    data = json.loads((tmp_path / "sub/t.json").read_text())
    assert data["meta"] == {"size": 56} and data["rows"][0]["fwd_ms"] == 1.5
    md = (tmp_path / "t.md").read_text()
    assert "| layer" in md and "| a " in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub", "t.csv", "t.md"]  # no temporary files left


def test_cli_bench_layers(tmp_path, capsys):
    out = tmp_path / "layers.json"
    rc = main(["bench", "layers", "--layers", "se,cbam", "--channels", "8", "--size", "5", "--batch", "1",
               "--repeats", "1", "--warmup", "0", "--json", str(out), "--no-memory"])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["layer"] for r in rows] == ["conv3x3", "se", "cbam"]
    assert "cbam" in capsys.readouterr().out
    assert main(["bench", "layers", "--layers", "se", "--repeats", "0"]) == 2
    assert "repeats" in capsys.readouterr().err


def test_bench_models_vs_plain():
    from convattn.bench import bench_models

    rows = bench_models("simple_cnn", "none,se,unknown_layer", size=28, batch=2, num_classes=10, in_chans=1,
                        train=True, repeats=1, warmup=0, memory=False)
    plain, se, unknown = rows
    assert plain["vs_plain"] == 1.0 and plain["mode"] == "train"
    assert se["vs_plain"] == pytest.approx(se["ms"] / plain["ms"])
    assert se["params"] > plain["params"]
    assert "not registered" in unknown["note"]


def test_bench_layers_trains_the_hand_written_backwards():
    # CBAM's and SE's training paths (C++ kernels or a hand-written backward) under the FLOP counter
    # and the memory tracker: the layers run plain ops there, and every row is measured.
    rows = bench_layers(["se", "cbam"], channels=16, size=8, batch=2, repeats=2, warmup=0)
    for row in rows:
        assert "failed" not in row.get("note", ""), row
        assert row["fwdbwd_ms"] > 0 and row["train_mem"] > 0
    cbam = next(r for r in rows if r["layer"] == "cbam")
    assert cbam["flops"] > 0


def test_bench_layers_trains_parameter_free_layers():
    # simam has no parameters: the backward is the input gradient, which the bench asks for
    (row,) = [r for r in bench_layers(["simam"], channels=8, size=6, batch=2, repeats=2, warmup=0) if r["layer"] == "simam"]
    assert "failed" not in row.get("note", ""), row
    assert row["fwdbwd_ms"] > 0
