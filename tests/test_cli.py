"""The command line end to end: train into a workdir, sweep, report, and errors with exit code 2."""

import json
import os

from smoothmax.cli import main as cli_main

CONFIGS = os.path.join(os.path.dirname(__file__), os.pardir, "configs")


def test_cli_end_to_end(tmp_path, capsys):
    workdir = tmp_path / "run"
    code = cli_main([
        "train", "--config", os.path.join(CONFIGS, "cifar10_cpu.py:lse"), "--workdir", str(workdir),
        "--config.data.name=synthetic", "--config.data.path=", "--config.data.num_train=256",
        "--config.data.num_test=100", "--config.data.batch_size", "64", "--config.model.widths=(8, 8, 8)",
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
    assert cli_main(["sweep", "--config", cfg, "--workdir", str(work), "--shard", "1/5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "shard 1/5 has 2" in out and "| objective |" in out
    assert len(list((work / "points").iterdir())) == 2
    assert cli_main(["report", str(work)]) == 0
    assert (work / "report.md").exists()
    assert cli_main(["sweep", "--config", cfg, "--workdir", str(work), "--shard", "5/5"]) == 2
    assert "--shard 5/5" in capsys.readouterr().err
    assert cli_main(["report", str(tmp_path / "empty")]) == 2
