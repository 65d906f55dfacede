"""Run ``convattn`` (argv) on the stand-in model and data in a fresh process.

Environment:
    CONVATTN_TEST_KILL_AT: SIGKILL this process right after that optimiser step.
    CONVATTN_TEST_KILL_SIGNAL: send this signal instead (``TERM``).
    CONVATTN_TEST_RANK_DIR: after training, each rank saves its model's state_dict there.
"""

import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

import standin  # noqa: E402
from convattn import cli  # noqa: E402
from convattn.engine import trainer  # noqa: E402

torch.set_num_threads(1)
standin.install()

kill_at = int(os.environ.get("CONVATTN_TEST_KILL_AT", "0"))
if kill_at:
    _step = trainer.WarmupSchedule.step

    def step(self, *args, **kwargs):
        _step(self, *args, **kwargs)
        if self.last_epoch == kill_at:
            os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("CONVATTN_TEST_KILL_SIGNAL", "KILL")))

    trainer.WarmupSchedule.step = step

models = []
_build = trainer.build_model


def build_model(config, info):
    models.append(_build(config, info))
    return models[-1]


trainer.build_model = build_model
rc = cli.main(sys.argv[1:])
rank_dir = os.environ.get("CONVATTN_TEST_RANK_DIR")
if rank_dir and models:
    torch.save(models[-1].state_dict(), os.path.join(rank_dir, f"rank{os.environ.get('RANK', '0')}.pt"))
sys.exit(rc)
