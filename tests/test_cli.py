"""The command line end to end: train into a workdir, sweep, report, and errors with exit code 2."""

import json
import os
import subprocess
import sys

import pytest

from smoothmax.cli import main as cli_main

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")
QUICKSTART = os.path.join(CONFIGS, "quickstart.py")
# A run of seconds: where a check is missing, the test fails quickly instead of training a real config.
TINY = ["--config.data.num_train=256", "--config.data.num_test=100", "--config.data.batch_size=64",
        "--config.model.widths=(8, 8, 8)", "--config.epochs=1", "--no-progress"]


def test_cli_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli_main([
        "train", "--config", os.path.join(CONFIGS, "cifar10_cpu.py:lse"), "--workdir", str(workdir),
        "--config.data.name=synthetic", "--config.data.path=", "--config.data.num_train=256",
        "--config.data.num_test=100", "--config.data.batch_size=64", "--config.model.widths=(8, 8, 8)",
        "--config.epochs=1", "--no-progress",
    ])
    assert code == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["objective"] == "lse"
    assert (workdir / "summary.json").exists() and (workdir / "metrics.jsonl").exists()
    assert cli_main(["train", "--config", os.path.join(CONFIGS, "cifar10_cpu.py"), "--workdir", str(workdir),
                     "--config.loss.nope=1"]) == 2
    assert "unknown config key 'loss.nope'" in capsys.readouterr().err


def test_cli_sweep_and_report(tmp_path, capsys):
    from tests.test_sweep import write_sweep_config

    cfg = write_sweep_config(tmp_path)
    work = tmp_path / "sweep"
    assert cli_main(["sweep", "--config", cfg, "--workdir", str(work), "--shard", "1/3", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "shard 1/3 has 2" in out and "| objective |" in out
    assert len(list((work / "points").iterdir())) == 2
    # The whole sweep without a report (its finished points are not retrained): no table, no report.md.
    assert cli_main(["sweep", "--config", cfg, "--workdir", str(work), "--no-progress", "--no-report"]) == 0
    assert "| objective |" not in capsys.readouterr().out and not (work / "report.md").exists()
    assert cli_main(["report", str(work)]) == 0
    assert (work / "report.md").exists()
    assert cli_main(["sweep", "--config", cfg, "--workdir", str(work), "--shard", "5/5"]) == 2
    assert "--shard 5/5" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "empty")]) == 2


# Each is refused before any work, with exit 2 and one line naming the key: (argument, the key).
REFUSED = [
    # Issue 11, failure 4: these trained and died in the summary, with IndexError, with ZeroDivisionError.
    ("--config.loss.temperature=-0.5", "loss.temperature"),
    ("--config.epochs=0", "epochs"),
    ("--config.eval_every_epochs=0", "eval_every_epochs"),
    ("--config.loss.temperature=nan", "loss.temperature"),
    ("--config.optimizer.decay=step", "optimizer.decay"),
    ("--config.data.batch_size=512", "data.batch_size"),  # more than the 256 training images
    # ast.literal_eval's TypeError and SyntaxError, once a traceback or a silent string.
    ("--config.model.widths={[1]: 2}", "model.widths"),
    ("--config.model.widths=(1,", "model.widths"),
    ("--config.seed=1+", "seed"),
    # A value the space form would have taken from the next flag.
    ("--config.data.cache_dir", "--config.data.cache_dir"),
]


@pytest.mark.parametrize("argument, key", REFUSED)
def test_cli_refuses_a_bad_config_before_any_work(tmp_path, capsys, argument, key):
    workdir = tmp_path / "run"
    code = cli_main(["train", "--config", QUICKSTART, "--workdir", str(workdir), *TINY[:-1], argument, TINY[-1]])
    out, err = capsys.readouterr()
    assert code == 2
    assert err.splitlines() == [err.strip()] and err.startswith("smoothmax: error: ") and key in err
    assert out == "" and not workdir.exists()


def test_cli_error_in_a_fresh_process_is_one_line(tmp_path):
    workdir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "smoothmax", "train", "--config", QUICKSTART, "--workdir", str(workdir), *TINY,
         "--config.epochs=0"],
        capture_output=True, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr == "smoothmax: error: config key 'epochs' = 0: must be an integer >= 1\n"
    assert not workdir.exists()
