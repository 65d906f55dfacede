"""benchmarks/transfer.py's claims that need no training: disjoint scans, and identity insertion on a new head."""

import importlib.util
from pathlib import Path

import pytest
import torch

from convattn.models import create_model

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "transfer.py"


@pytest.fixture(scope="module")
def transfer():
    spec = importlib.util.spec_from_file_location("transfer_benchmark", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fine_tuning_test_scans_never_reach_pretraining(transfer):
    assert transfer.check_disjoint().endswith(": 0 shared")


def test_identity_insertion_keeps_the_fine_tuning_runs_first_logits(transfer, tmp_path):
    """The runs' models before their first step, built as train() builds them from the 1-channel pretrained weights
    saved with a 3-channel stem and no head: identity-initialised SE gives plain's logits exactly, naive SE does not."""
    args = transfer.parse_args(["--out", str(tmp_path), "--seeds", "1", "--target-size", "20"])
    torch.manual_seed(0)
    pretrained = create_model("resnet20", num_classes=10, in_chans=1)
    with torch.no_grad():  # BatchNorm statistics a random init lacks, so naive gates change the outputs visibly
        for m in pretrained.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    transfer.write_backbone(args, pretrained.state_dict())
    plain, labels = transfer.initial_logits(transfer.finetune_config(args, "plain", 0))
    identity, _ = transfer.initial_logits(transfer.finetune_config(args, "identity", 0))
    naive, _ = transfer.initial_logits(transfer.finetune_config(args, "naive", 0))
    assert plain.shape == (270, 10) and labels.shape == (270,)
    torch.testing.assert_close(identity, plain, rtol=0, atol=1e-6)
    assert (naive - plain).abs().max() > 1e-3
