"""The objectives study's stages, choices and report (configs/sweep_temperature.py, experiments/study.py).

Training every stage for real takes hours, so the points here are one real tiny run's files, copied into
each point folder of the stages' real grids with the metrics a test needs set by hand."""

import copy
import csv
import importlib.util
import json
import math
import shutil
import sys

import pytest

from smoothmax import sweep, train
from smoothmax.config import ConfigError
from tests.test_train import tiny_config

from .test_sweep import REPO

SPEC = str(REPO / "configs" / "sweep_temperature.py")
SYNTHETIC = ["data.name=synthetic"]  # the grids' points without hashing a CIFAR-10 copy


@pytest.fixture
def study(tmp_path, monkeypatch):
    """experiments/study.py (and the config it reads) with the study's workdir in tmp_path."""
    monkeypatch.setenv("SMOOTHMAX_STUDY_DIR", str(tmp_path / "study"))
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in ("sweep_temperature", "study_module"):
        sys.modules.pop(name, None)
    spec = importlib.util.spec_from_file_location("study_module", REPO / "experiments" / "study.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (tmp_path / "study").mkdir()
    return module


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One real run with the study's measurements: validation split, clean training set, inner evaluations."""
    c = tiny_config(name="lse", temperature=0.5)
    c.data.validation, c.data.eval_train, c.evals_per_epoch = 100, True, 2
    work = tmp_path_factory.mktemp("template")
    train.train_and_evaluate(c, work, progress=False)
    return work


def fake_stage(work, template, stage, accuracy) -> list[dict]:
    """Record ``stage``'s invocation and finish each of its points with the template's files, the point's
    config values and ``accuracy(overrides)`` as its validation and test accuracy."""
    points = sweep.load_sweep(f"{SPEC}:{stage}", SYNTHETIC)
    sweep.record_invocation(work, {"config": f"configs/sweep_temperature.py:{stage}", "overrides": SYNTHETIC,
                                   "points": [{"name": p["name"], "overrides": p["overrides"], "hash": p["hash"]}
                                              for p in points]})
    summary = json.loads((template / "summary.json").read_text())
    for p in points:
        folder = work / "points" / p["name"]
        if (folder / "summary.json").exists():
            continue
        shutil.copytree(template, folder, ignore=shutil.ignore_patterns("checkpoints", "time", ".lock"))
        c, s = p["config"], copy.deepcopy(summary)
        s.update(objective=c.loss.name, temperature=c.loss.temperature, margin=c.loss.margin, head=c.model.head,
                 epochs=c.epochs, seed=c.seed, val_accuracy=accuracy(p["overrides"]),
                 test_accuracy=accuracy(p["overrides"]) + 0.001 * c.seed)
        s["final"]["calibrated_test_nll"] = 1.0 + 0.01 * c.seed
        s["final"]["clean_train_implicit_margin_mean"] = 0.3 * c.loss.temperature + 0.01 * c.seed
        (folder / "summary.json").write_text(json.dumps(s))
    return points


def accuracy(o) -> float:
    """A made-up validation accuracy: best at η = 0.06, except hard m = 1 (linear head), best at 0.6 beyond the
    first grid, and lse at τ = 0.1 (linear head), best at its rule rate η₁·τ = 0.006."""
    lr, row = o["optimizer.learning_rate"], (o["loss.name"], o["loss.temperature"], o["loss.margin"], o["model.head"])
    if row == ("hard", 0.0, 1.0, "linear"):
        return {0.6: 0.8, 0.2: 0.75}.get(lr, 0.6)
    if row == ("lse", 0.1, 0.0, "linear"):
        return {0.006: 0.9, 0.06: 0.6}.get(lr, 0.5)
    return 0.7 if lr == 0.06 else 0.6


def test_stages_choose_on_validation_and_the_report_reads_the_points_alone(study, template, tmp_path):
    work = tmp_path / "study"
    with pytest.raises(ConfigError, match="choose"):  # a stage that needs choices before they exist
        sweep.load_sweep(f"{SPEC}:replicate", SYNTHETIC)
    select = fake_stage(work, template, "select", accuracy)
    assert len(select) == len(study.study.rows()) * 3 and {p["config"].seed for p in select} == {0}
    choices = study.choose(work)
    main = study.study.row_key({"loss.name": "lse", "loss.temperature": 0.1, "loss.margin": 0.0,
                                "model.head": "linear"})
    hard = study.study.row_key({"loss.name": "hard", "loss.temperature": 0.0, "loss.margin": 1.0,
                                "model.head": "linear"})
    assert main not in choices["learning_rate"] and hard not in choices["learning_rate"]  # rule / edge open
    assert set(choices["learning_rate"].values()) == {0.06}

    extended = [p["overrides"]["optimizer.learning_rate"] for p in fake_stage(work, template, "extend", accuracy)]
    assert extended == [0.6]  # hard m = 1's best was 0.2, the top of the grid
    study.choose(work)
    extended = [p["overrides"]["optimizer.learning_rate"] for p in fake_stage(work, template, "extend", accuracy)]
    assert extended == [2.0]
    choices = study.choose(work)
    assert choices["learning_rate"][hard] == 0.6  # inside the rates tried at last
    assert fake_stage(work, template, "extend", accuracy) == []

    rule = fake_stage(work, template, "rule", accuracy)
    assert sorted({p["overrides"]["optimizer.learning_rate"] for p in rule}) == [0.0018, 0.006, 0.018, 0.18]
    choices = study.choose(work)
    assert main not in choices["learning_rate"]  # its rule rate won at the series' low edge
    extended = [p["overrides"]["optimizer.learning_rate"] for p in fake_stage(work, template, "extend", accuracy)]
    assert extended == [0.002]
    choices = study.choose(work)
    assert len(choices["learning_rate"]) == len(study.study.rows()) and choices["learning_rate"][main] == 0.006

    replicate = fake_stage(work, template, "replicate", accuracy)
    for p in replicate:  # a replicate varies the weights and the data together, at the chosen rate
        assert p["config"].seed == p["config"].data.seed
        assert p["config"].optimizer.learning_rate == choices["learning_rate"][study.study.row_key(p["overrides"])]
    choices = study.choose(work)
    assert choices["implicit_margin"][main] == pytest.approx(0.3 * 0.1 + 0.01)  # seeds 0, 1, 2
    fake_stage(work, template, "long", accuracy)
    controls = fake_stage(work, template, "controls", accuracy)
    margins = {p["overrides"]["loss.margin"] for p in controls}
    assert margins >= {0.04, round(0.1 * math.log(9), 4), -round(math.log(9), 4)}

    study.report(work)
    rows = list(csv.DictReader((work / "results.csv").open()))
    required = {"objective", "temperature", "margin", "head", "epochs", "control", "n_seeds", "learning_rate",
                "val_accuracy_mean", "test_accuracy_mean", "test_accuracy_ci95", "train_logit_margin_mean",
                "train_implicit_margin_mean", "implicit_margin_bound", "train_zero_loss_fraction",
                "gradient_participation", "posthoc_temperature", "calibrated_test_nll", "test_ece"}
    assert required <= set(rows[0]) and all(r["n_seeds"] == "3" for r in rows)
    assert {r["epochs"] for r in rows} == {"2", "8"} and {r["control"] for r in rows} >= {
        "", "AM-Softmax (s = 30, m = 0.35)", "dense gradient only: lse, m = −τ·log(C−1)"}
    paired = list(csv.DictReader((work / "paired.csv").open()))
    assert paired and all(r["n_pairs"] == "3" for r in paired)
    dense_only = {r["comparison"] for r in paired if r["comparison"].startswith("dense gradient only")}
    assert {c.rsplit(" − ", 1)[1] for c in dense_only} == {"lse at τ = 0.1", "lse at τ = 1", "hard m = 0"}
    figures = {p.name for p in (work / "figures").iterdir()}
    assert figures == {f"{name}.png" for name in study.FIGURES}


def test_paired_p_is_the_paired_t_test_and_holm_steps_down(study):
    from scipy import stats

    diffs = [1.0, 2.0, 3.5]
    assert study.paired_p(diffs) == pytest.approx(stats.ttest_1samp(diffs, 0.0).pvalue)
    assert study.paired_p([0.5, 0.5, 0.5]) == 0.0 and study.paired_p([0.0, 0.0]) == 1.0
    # 0.01 < 0.05/4 is rejected; 0.03 ≥ 0.05/3 stops the procedure, so 0.04 is kept although 0.04 < 0.05/2.
    assert study.holm([0.01, 0.04, 0.03, 0.5]) == [True, False, False, False]
    assert study.holm([0.001, 0.02, 0.012]) == [True, True, True]
