"""Sweeps: grid expansion, shards, skip/resume after a kill, population = sequential, report files."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from smoothmax import report, sweep, train
from smoothmax.config import ConfigError
from tests.test_train import tiny_config

REPO = Path(__file__).resolve().parents[1]

SWEEP_CONFIG = '''
from smoothmax.sweep import product
from tests.test_train import tiny_config

def get_config(arg=""):
    c = tiny_config()
    c.epochs = {epochs}
    c.model.widths = (8, 8, 8)
    c.log_every_steps = 2
    return c

def get_sweep(arg=""):
    return (product({{"loss.name": ["hard"], "loss.temperature": [0.0], "loss.margin": [0.0, 1.0]}})
            + product({{"loss.name": ["lse", "softmax"], "loss.temperature": [0.1, 1.0],
                        "model.head": ["linear", "cosine"]}}))
'''


def write_sweep_config(tmp_path, epochs=1) -> str:
    path = tmp_path / "sweep_cfg.py"
    path.write_text(SWEEP_CONFIG.format(epochs=epochs))
    return str(path)


def test_grid_expansion_names_and_shards(tmp_path):
    points = sweep.load_sweep(write_sweep_config(tmp_path))
    names = [p["name"] for p in points]
    assert len(points) == 10 and len(set(names)) == 10
    assert names[0] == "hard_t0_m0" and "lse_t0.1_cosine" in names
    lse = next(p for p in points if p["name"] == "lse_t0.1_cosine")
    assert lse["config"].loss.temperature == 0.1 and lse["config"].model.head == "cosine"
    shards = [points[i::3] for i in range(3)]
    assert sorted(p["name"] for s in shards for p in s) == sorted(names)  # disjoint and complete
    assert sweep.parse_shard("1/3") == (1, 3)
    with pytest.raises(ConfigError):
        sweep.parse_shard("3/3")
    # Populations: same everything but τ, m, seed.
    groups = sweep.populations(points)
    assert sorted(len(g) for g in groups) == [2, 2, 2, 2, 2]
    assert sweep.product({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


def test_sweep_runs_skips_finished_and_writes_report(tmp_path):
    cfg = write_sweep_config(tmp_path)
    work = tmp_path / "work"
    summaries = sweep.run_sweep(cfg, work, shard=(0, 2), progress=False)
    assert len(summaries) == 5
    done = sorted(p.name for p in (work / "points").iterdir())
    assert len(done) == 5
    mtimes = {n: (work / "points" / n / "summary.json").stat().st_mtime_ns for n in done}
    sweep.run_sweep(cfg, work, shard=(0, 2), progress=False)  # nothing to do
    assert {n: (work / "points" / n / "summary.json").stat().st_mtime_ns for n in done} == mtimes
    sweep.run_sweep(cfg, work, shard=(1, 2), progress=False)
    assert len(list((work / "points").iterdir())) == 10
    path = report.write_report(work)
    text = path.read_text()
    assert "| lse | 0.1 | 0 | cosine |" in text and "figures/accuracy_vs_temperature.png" in text
    for fig in ("accuracy_vs_temperature", "training_curves", "logit_margins", "implicit_margin", "loss_shapes",
                "gradient_support", "cosine_floor"):
        png = work / "figures" / f"{fig}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert (work / "results.csv").read_text().startswith("objective,temperature")


def test_killed_sweep_resumes_without_loss_or_duplicates(tmp_path):
    cfg = write_sweep_config(tmp_path, epochs=3)
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "smoothmax", "sweep", "--config", cfg, "--workdir", str(work), "--no-progress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    # Kill once the first point has finished and the second has a checkpoint.
    deadline = time.time() + 300
    while time.time() < deadline:
        finished = list(work.glob("points/*/summary.json"))
        ckpts = [p for p in work.glob("points/*/checkpoints/*") if p.name.isdigit()]
        if finished and len(ckpts) > 2:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished_before = {p.parent.name: p.read_text() for p in work.glob("points/*/summary.json")}
    assert 1 <= len(finished_before) < 10
    out = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"{len(finished_before)} finished" in out.stdout
    # Finished results untouched, every point done exactly once, histories complete and unduplicated.
    for name, text in finished_before.items():
        assert (work / "points" / name / "summary.json").read_text() == text
    for point in (work / "points").iterdir():
        epochs = [json.loads(l)["epoch"] for l in (point / "metrics.jsonl").read_text().splitlines()]
        assert epochs == [1, 2, 3], (point.name, epochs)


def test_population_matches_sequential_runs(tmp_path):
    base = tiny_config(name="softmax")
    base.model.widths = (8, 8, 8)
    members = []
    for tau, m, seed in ((0.1, 0.0, 0), (1.0, 0.2, 0), (0.5, 0.0, 1)):
        c = base.copy_and_resolve_references()
        c.loss.temperature, c.loss.margin, c.seed = tau, m, seed
        members.append(c)
    from smoothmax.train import load_data

    ds = load_data(base)
    pop = train.train_members(members, [tmp_path / f"p{i}" for i in range(3)], tmp_path / "ckpt", vmapped=True,
                              progress=False, dataset=ds)
    for i, c in enumerate(members):
        seq = train.train_and_evaluate(c, tmp_path / f"s{i}", progress=False, dataset=ds)
        assert pop[i]["test_accuracy"] == pytest.approx(seq["test_accuracy"], abs=0.011)
        assert pop[i]["test_loss"] == pytest.approx(seq["test_loss"], rel=1e-3, abs=1e-4)
        assert pop[i]["train_loss"] == pytest.approx(seq["train_loss"], rel=1e-3, abs=1e-4)
    assert pop[0]["population"] == 3
    with pytest.raises(ValueError, match="may differ only in"):
        other = base.copy_and_resolve_references()
        other.model.head = "cosine"
        train.train_members([base, other], [tmp_path / "x", tmp_path / "y"], tmp_path / "c2", vmapped=True,
                            progress=False, dataset=ds)


def test_report_rejects_an_empty_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no points"):
        report.write_report(tmp_path)
    (tmp_path / "points").mkdir()
    with pytest.raises(FileNotFoundError, match="no finished points"):
        report.write_report(tmp_path)


def test_normface_floor_values():
    # NormFace's CE bound log(1 + (C−1)e^{−sC/(C−1)}) for C = 10: 1.377 at s = 1, 0.034 at s = 5.
    assert report.normface_floor(10, 1.0) == pytest.approx(1.377, abs=1e-3)
    assert report.normface_floor(10, 0.2) / 0.2 == pytest.approx(0.034, abs=1e-3)


def test_lse_cosine_floor_values():
    # Target cosine 1, rivals at −1/(C−1): τ·log 9 − 10/9 for C = 10, zero once τ ≤ 10/(9·log 9) ≈ 0.506.
    assert report.lse_cosine_floor(10, 1.0) == pytest.approx(np.log(9) - 10 / 9)
    assert report.lse_cosine_floor(10, 0.5) == 0.0
    assert report.lse_cosine_floor(10, 0.51) > 0.0


def test_population_split_over_four_devices_by_members(tmp_path):
    # 4 members on 4 forced host devices: each device trains one member on the whole batch.
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parents[1])!r})
        from tests.test_train import tiny_config
        from smoothmax import train
        base = tiny_config(name="softmax")
        base.model.widths = (8, 8, 8)
        members = []
        for tau in (0.1, 0.3, 1.0, 3.0):
            c = base.copy_and_resolve_references()
            c.loss.temperature = tau
            members.append(c)
        out = sys.argv[1]
        pop = train.train_members(members, [f"{{out}}/p{{i}}" for i in range(4)], f"{{out}}/ckpt", vmapped=True,
                                  progress=False)
        seq = [train.train_and_evaluate(members[i], f"{{out}}/s{{i}}", progress=False) for i in (0, 3)]
        print(json.dumps({{"split": pop[0]["population_split"], "devices": pop[0]["devices"],
                           "pop": [pop[i]["test_loss"] for i in (0, 3)], "seq": [s["test_loss"] for s in seq]}}))
    """)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["split"] == "members" and result["devices"] == 4
    np.testing.assert_allclose(result["pop"], result["seq"], rtol=2e-2)
