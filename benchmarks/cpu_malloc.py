"""What keeping freed memory in the process (``convattn.engine.memory``) does to CPU training.

Trains the same short run (``convattn train``: one epoch of ``--model`` on cluttered digits,
one thread) in fresh processes, alternately with glibc's default malloc settings
(``CONVATTN_MALLOC_TUNING=0``) and with the settings ``convattn.engine.train`` makes, and prints
each run's seconds per epoch and minor page faults (the whole process), then medians, worst
cases and their ratios. With the defaults the page faults vary from run to run (glibc adapts
its thresholds to what was freed before), so several rounds are needed.

Examples::

    python benchmarks/cpu_malloc.py
    python benchmarks/cpu_malloc.py --model simple_cnn --attention cbam --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

_RUN = """
import json, resource, sys
from convattn.cli import main
out = sys.argv[-1]
rc = main(["train", *sys.argv[1:-1], "--out", out])
res = json.load(open(out + "/results.json"))
print(json.dumps({"epoch_time": res["epoch_time"], "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt}))
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="simple_cnn")
    p.add_argument("--attention", default=None)
    p.add_argument("--train-size", type=int, default=2000, help="training images (default: 2000)")
    p.add_argument("--rounds", type=int, default=4, help="runs per setting, alternating (default: 4)")
    args = p.parse_args(argv)
    if args.rounds < 1 or args.train_size < 1:
        p.error("--rounds and --train-size must be >= 1")

    times: dict[str, list[float]] = {"default": [], "kept": []}
    faults: dict[str, list[int]] = {"default": [], "kept": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for setting in ("default", "kept"):
                cmd = ["--model", args.model, "--dataset", "cluttered-digits", "--train-size", str(args.train_size),
                       "--val-size", "200", "--test-size", "200", "--epochs", "1", "--no-progress"]
                if args.attention:
                    cmd += ["--attention", args.attention]
                if args.attention == "cbam":
                    cmd += ["--model-kwargs", "identity_init=true"]  # the demo's CBAM
                env = {**os.environ, "OMP_NUM_THREADS": "1",
                       "CONVATTN_MALLOC_TUNING": "0" if setting == "default" else "1"}
                out = subprocess.run([sys.executable, "-c", _RUN, *cmd, os.path.join(tmp, f"{setting}-{i}")], env=env,
                                     check=True, capture_output=True, text=True).stdout
                res = json.loads(out.strip().splitlines()[-1])
                times[setting].append(res["epoch_time"])
                faults[setting].append(res["faults"])
                print(f"round {i + 1} {setting:7s}  {res['epoch_time']:6.2f} s/epoch  {res['faults']:>9,} page faults",
                      flush=True)
    name = args.model + (f" + {args.attention}" if args.attention else "")
    print(f"\n{name}, one epoch of {args.train_size} cluttered digits (convattn train), one thread, {args.rounds} runs each:")
    for setting, label in (("default", "default malloc"), ("kept", "memory kept   ")):
        t, f = times[setting], faults[setting]
        print(f"{label}  s/epoch median {statistics.median(t):.2f}, worst {max(t):.2f};  "
              f"page faults median {statistics.median(f):,.0f}, worst {max(f):,}")
    print(f"median ratio {statistics.median(times['default']) / statistics.median(times['kept']):.2f}x, "
          f"worst-case ratio {max(times['default']) / max(times['kept']):.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
