"""The trainer on tiny models and the synthetic set: objectives, heads, resume, determinism, devices."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from smoothmax import data, train
from smoothmax.config import base_config


def tiny_config(**loss):
    c = base_config()
    c.epochs = 2
    c.data.num_train = 512
    c.data.num_test = 200
    c.data.batch_size = 64
    c.data.eval_batch_size = 100
    c.data.difficulty = 0.2
    c.model.widths = (8, 16, 16)
    c.optimizer.learning_rate = 0.05
    c.log_every_steps = 4
    for k, v in loss.items():
        c.loss[k] = v
    return c


@pytest.fixture(scope="module")
def tiny_data():
    c = tiny_config()
    return data.synthetic(seed=0, num_train=c.data.num_train, num_test=c.data.num_test, difficulty=0.2)


def read_metrics(workdir):
    return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(
    "loss,head",
    [
        (dict(name="hard", temperature=0.0, margin=1.0), "linear"),
        (dict(name="lse", temperature=0.3, margin=0.0), "linear"),
        (dict(name="softmax", temperature=1.0, margin=0.0), "linear"),
        (dict(name="softmax", temperature=0.1, margin=0.1), "cosine"),
        (dict(name="lse", temperature=0.1, margin=0.0), "cosine"),
    ],
)
def test_every_objective_and_head_trains(tmp_path, tiny_data, loss, head):
    c = tiny_config(**loss)
    c.model.head = head
    c.epochs = 3
    summary = train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    rows = read_metrics(tmp_path)
    assert len(rows) == 3 and rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert summary["test_accuracy"] > 0.2  # chance is 0.1
    required = {"objective", "temperature", "margin", "head", "epochs", "test_accuracy", "test_loss", "test_ce",
                "train_accuracy", "logit_margin_mean", "logit_margin_quantiles", "implicit_margin_mean",
                "implicit_margin_bound", "zero_loss_fraction", "wall_seconds", "images_per_second", "devices",
                "config"}
    assert required <= set(summary)
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["objective"] == loss["name"] and saved["head"] == head
    assert saved["implicit_margin_mean"] <= saved["implicit_margin_bound"] + 1e-6


def test_same_config_and_seed_give_identical_metrics(tmp_path, tiny_data):
    c = tiny_config(name="lse", temperature=0.5)
    train.train_and_evaluate(c, tmp_path / "a", progress=False, dataset=tiny_data)
    train.train_and_evaluate(c, tmp_path / "b", progress=False, dataset=tiny_data)
    assert read_metrics(tmp_path / "a") == read_metrics(tmp_path / "b")


def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, tiny_data, monkeypatch):
    c = tiny_config(name="softmax", temperature=0.5, final_temperature=0.1)
    c.epochs = 3
    train.train_and_evaluate(c, tmp_path / "full", progress=False, dataset=tiny_data)

    real_evaluate, calls = train.evaluate, []

    def crash_on_second_eval(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill during epoch 2")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_on_second_eval)
    with pytest.raises(KeyboardInterrupt):
        train.train_and_evaluate(c, tmp_path / "cut", progress=False, dataset=tiny_data)
    assert len(read_metrics(tmp_path / "cut")) == 1
    monkeypatch.setattr(train, "evaluate", real_evaluate)
    train.train_and_evaluate(c, tmp_path / "cut", progress=False, dataset=tiny_data)
    assert read_metrics(tmp_path / "cut") == read_metrics(tmp_path / "full")


def test_schedules_move_temperature_and_margin(tmp_path, tiny_data):
    c = tiny_config(name="softmax", temperature=1.0, final_temperature=0.1, margin=0.0, final_margin=0.5)
    summary = train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    rows = read_metrics(tmp_path)
    assert rows[0]["temperature"] < 1.0 and rows[-1]["temperature"] == pytest.approx(0.1)
    assert summary["final_margin"] == pytest.approx(0.5)
    assert train.loss_schedule(c.loss, 0.5) == pytest.approx((0.55, 0.25))


def test_four_host_devices_match_one(tmp_path):
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_train import tiny_config
        from smoothmax import train
        c = tiny_config(name="lse", temperature=0.5)
        s = train.train_and_evaluate(c, sys.argv[1], progress=False)
        print(json.dumps({{"devices": s["devices"], "acc": s["test_accuracy"], "loss": s["test_loss"]}}))
    """)
    results = {}
    for n in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={n}", JAX_PLATFORMS="cpu")
        out = subprocess.run([sys.executable, "-c", script, str(tmp_path / str(n))], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        results[n] = json.loads(out.stdout.strip().splitlines()[-1])
    assert results[1]["devices"] == 1 and results[4]["devices"] == 4
    assert results[4]["loss"] == pytest.approx(results[1]["loss"], rel=2e-2)
    assert abs(results[4]["acc"] - results[1]["acc"]) <= 0.03


def test_resnet18_with_cosine_head_trains(tmp_path, tiny_data):
    c = tiny_config(name="softmax", temperature=0.1)
    c.model.name = "resnet18"
    c.model.widths = (4, 4, 8, 8)
    c.model.head = "cosine"
    c.epochs = 1
    summary = train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    assert summary["model"] == "resnet18" and np.isfinite(summary["test_loss"])
