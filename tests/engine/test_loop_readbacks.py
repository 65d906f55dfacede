"""The training loop reads its running sums back from the device only at bounded points: never per step."""

import sys

import pytest
import torch

import standin
from convattn.engine import TrainConfig, train
from convattn.engine.metrics import read_metrics
from convattn.engine import trainer

LOOP_FILES = ("trainer.py", "metrics.py", "guard.py")


@pytest.fixture(autouse=True)
def _standin(monkeypatch):
    standin.install(monkeypatch)


def _count_readbacks(monkeypatch):
    """Counts tensor-to-host reads (``item``, ``tolist``, ``float``) made by the loop's own modules."""
    counts = {"n": 0}
    for name in ("item", "tolist", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, **k):
            if sys._getframe(1).f_code.co_filename.endswith(LOOP_FILES):
                counts["n"] += 1
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return counts


@pytest.mark.parametrize("batch_size", [16, 48])  # 6 and 2 steps per epoch
def test_readbacks_per_epoch_do_not_grow_with_steps(tmp_path, monkeypatch, batch_size):
    counts = _count_readbacks(monkeypatch)
    train(TrainConfig(epochs=2, batch_size=batch_size, lr=0.1, progress=False, device="cpu", clip_grad=1.0,
                      out=str(tmp_path / "run")))
    # per epoch: the running sums at its end, and the weights checked before its checkpoint
    assert counts["n"] == 2 * 2


class _Bar:
    def __init__(self, **kw):
        self.updates, self.shown = 0, []

    def update(self, n):
        self.updates += n

    def set_postfix(self, **kw):
        self.shown.append(kw)

    def close(self):
        pass


def test_the_bar_counts_every_step_and_shows_the_running_loss_at_a_bounded_rate(tmp_path, monkeypatch):
    bars = []
    monkeypatch.setattr(trainer, "progress_bar", lambda enabled, **kw: bars.append(_Bar(**kw)) or bars[-1])
    monkeypatch.setattr(trainer.time, "perf_counter", iter(range(0, 10**6, 1)).__next__)  # one second per call
    train(TrainConfig(epochs=1, batch_size=16, lr=0.1, device="cpu", out=str(tmp_path / "run")))
    (bar,) = bars
    assert bar.updates == 6 and len(bar.shown) == 6  # each step a second apart: each is shown
    assert float(bar.shown[-1]["loss"]) == pytest.approx(read_metrics(tmp_path / "run")[0]["train_loss"], abs=1e-4)

    monkeypatch.setattr(trainer.time, "perf_counter", lambda: 0.0)  # no time passes: the first and last step only
    bars.clear()
    train(TrainConfig(epochs=1, batch_size=16, lr=0.1, device="cpu", out=str(tmp_path / "run2")))
    assert bars[0].updates == 6 and len(bars[0].shown) == 2
