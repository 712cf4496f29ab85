"""An 8-temperature sweep as one ``smoothmax sweep`` against 8 separate ``smoothmax train`` processes.

    python experiments/bench_sweep.py [--epochs 2]

Both run the same short recipe (softmax objective, τ over 8 values, small CNN on the synthetic set) from a
cold process start. Prints one JSON line: both wall times, their ratio (target <= 0.7 on the 2-core CPU) and
the largest difference in test accuracy and loss between a sweep member and its separate run (they must
match: same seed, same batches).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from smoothmax.provenance import machine

TEMPERATURES = [0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0]

RECIPE = '''
from smoothmax.config import base_config
from smoothmax.sweep import product

def get_config(arg=""):
    c = base_config()
    c.epochs = {epochs}
    c.eval_every_epochs = {epochs}
    c.checkpoint.every_epochs = {epochs}
    c.data.name = "synthetic"
    c.data.num_train = 5000
    c.data.num_test = 2000
    c.data.batch_size = 128
    c.model.widths = (16, 32, 64)
    c.optimizer.learning_rate = 0.1
    c.loss.name = "softmax"
    return c

def get_sweep(arg=""):
    return product({{"loss.temperature": {temps}}})
'''


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "smoothmax"]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "recipe.py"
        config.write_text(RECIPE.format(epochs=args.epochs, temps=TEMPERATURES))

        start = time.perf_counter()
        subprocess.run(cli + ["sweep", "--config", str(config), "--workdir", str(tmp / "sweep"), "--no-progress"],
                       check=True, capture_output=True)
        sweep_seconds = time.perf_counter() - start

        start = time.perf_counter()
        for t in TEMPERATURES:
            subprocess.run(cli + ["train", "--config", str(config), "--workdir", str(tmp / f"train-{t:g}"),
                                  f"--config.loss.temperature={t}", "--no-progress"], check=True, capture_output=True)
        separate_seconds = time.perf_counter() - start

        acc_diff = loss_diff = 0.0
        for t in TEMPERATURES:
            (point,) = (tmp / "sweep" / "points").glob(f"t{t:g}-*")  # grid label, then the config's hash
            a = json.loads((point / "summary.json").read_text())
            b = json.loads((tmp / f"train-{t:g}" / "summary.json").read_text())
            acc_diff = max(acc_diff, abs(a["test_accuracy"] - b["test_accuracy"]))
            loss_diff = max(loss_diff, abs(a["test_loss"] - b["test_loss"]))
    ratio = sweep_seconds / separate_seconds
    print(json.dumps({
        "case": "sweep8_vs_8_processes", "sweep_seconds": round(sweep_seconds, 1),
        "separate_seconds": round(separate_seconds, 1), "ratio": round(ratio, 3), "target": 0.7, "ok": ratio <= 0.7,
        "max_test_accuracy_diff": acc_diff, "max_test_loss_diff": loss_diff, "machine": machine(),
    }), flush=True)


if __name__ == "__main__":
    main()
