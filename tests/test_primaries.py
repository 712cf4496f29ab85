"""The pre-registered study's choices and report (configs/primaries.py, experiments/primaries.py).

Training the study takes days, so each point here is fabricated: a summary.json, metrics.jsonl and
experiment.json in the format the harness writes (smoothmax/train.py), listed in a sweep.json invocation as
smoothmax.sweep records it, so that finished_points reads them as it reads the real ones."""

import csv
import importlib.util
import json
import math

import numpy as np
import pytest
from scipy import stats

from smoothmax import sweep

from .test_sweep import REPO


@pytest.fixture(scope="module")
def primaries():
    spec = importlib.util.spec_from_file_location("primaries_report_under_test", REPO / "experiments" / "primaries.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def overrides(primaries, row, lr, seed, margin=None) -> dict:
    o = {**primaries.design.ROWS[row], "optimizer.learning_rate": lr, "seed": seed, "data.seed": seed}
    if row == "R5":
        o["loss.margin"] = margin
    return o


def fake_point(work, o: dict, *, epochs=6, val=0.8, test=0.8, implicit=0.1) -> dict:
    """A finished point with the summary keys the report reads; returns its sweep.json entry."""
    name = (f"{o['loss.name']}_t{o['loss.temperature']}_m{o['loss.margin']}_{o['model.head']}"
            f"_lr{o['optimizer.learning_rate']}_e{epochs}_s{o['seed']}")
    folder = work / "points" / name
    folder.mkdir(parents=True)
    tau = o["loss.temperature"]
    rng = np.random.default_rng(o["seed"])
    counts, edges = np.histogram(rng.normal(2 * max(tau, 0.5), 1.0, 500), bins=20)
    final = {"temperature": tau, "clean_train_accuracy": 0.9, "clean_train_loss": 0.3,
             "clean_train_logit_margin_mean": 2.0, "clean_train_logit_margin_over_tau_mean": 2 / tau if tau else None,
             "clean_train_implicit_margin_mean": implicit,
             "clean_train_implicit_margin_over_tau_mean": implicit / tau if tau else None,
             "clean_train_zero_loss_fraction": 0.2, "clean_train_gradient_participation": 1.5,
             "clean_train_logit_norm_mean": 5.0, "posthoc_temperature": 1.2, "calibrated_test_nll": 0.5,
             "test_ece": 0.05 + 0.01 * o["seed"], "calibrated_test_ece": 0.02,
             "clean_train_logit_margin_histogram": {"edges": edges.tolist(), "counts": counts.tolist()}}
    summary = {"objective": o["loss.name"], "temperature": tau, "margin": o["loss.margin"],
               "head": o["model.head"], "epochs": epochs, "seed": o["seed"], "test_accuracy": test,
               "test_tta_accuracy": test + 0.01, "val_accuracy": val, "implicit_margin_bound": tau * math.log(9),
               "wall_seconds": 400.0, "final": final,
               "config": {"optimizer": {"learning_rate": o["optimizer.learning_rate"], "weight_decay": 5e-4}}}
    (folder / "summary.json").write_text(json.dumps(summary))
    (folder / "experiment.json").write_text(json.dumps({"canonical": {**o, "epochs": epochs}}))
    history = [{"epoch": e, "step": 703 * e, "val_accuracy": val * e / epochs} for e in range(1, epochs + 1)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in history))
    return {"name": name, "overrides": o, "hash": name[-10:]}


def record(work, stage: str, entries: list[dict]) -> None:
    sweep.record_invocation(work, {"config": f"configs/primaries.py:{stage}", "overrides": [],
                                   "population_mode": "sequential", "backend": "cpu", "points": entries})


def write_choices(work, choices: dict) -> None:
    (work / "choices.json").write_text(json.dumps(choices))


def read_csv(path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


RATES = {row: 0.05 for row in ("R1", "R2", "R3", "R4", "R5", "R6", "R7")}


def evaluate_stage(primaries, work, accuracies: dict, epochs=6, margin=0.2) -> None:
    """Evaluation points: ``{row: [test accuracy per seed 0, 1, ...]}`` at the row's rate."""
    record(work, "evaluate" if epochs == 6 else "long-evaluate",
           [fake_point(work, overrides(primaries, row, RATES[row], seed, margin), epochs=epochs, test=acc)
            for row, accs in accuracies.items() for seed, acc in enumerate(accs)])


def test_primaries_csv_equals_an_independent_paired_computation(primaries, tmp_path):
    work = tmp_path / "w"
    rng = np.random.default_rng(0)
    acc = {"R1": 0.85 + 0.004 * rng.standard_normal(5), "R3": 0.83 + 0.004 * rng.standard_normal(5),
           "R2": 0.849 + 0.004 * rng.standard_normal(3)}  # R2: three seeds only
    evaluate_stage(primaries, work, {k: v.tolist() for k, v in acc.items()})
    write_choices(work, {"learning_rate": RATES, "R5_margin": 0.2})
    primaries.report(work, primaries.finished_points(work), primaries.design.read_choices(work))
    rows = {r["label"]: r for r in read_csv(work / "primaries.csv") if r["budget_epochs"] == "6"}
    assert list(rows) == ["H1", "H2", "H3", "H4", "H5"] and all(r["holm_family"] == "H1–H5 at 6 epochs"
                                                                  for r in rows.values())
    p = {}
    for label, a, b in (("H1", "R1", "R3"), ("H2", "R2", "R3"), ("H3", "R1", "R2")):
        n = min(len(acc[a]), len(acc[b]))
        d = acc[a][:n] - acc[b][:n]
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n)
        p[label] = stats.ttest_rel(acc[a][:n], acc[b][:n]).pvalue
        r = rows[label]
        assert int(r["n"]) == n
        assert float(r["test_accuracy_diff"]) == pytest.approx(d.mean(), abs=1e-12)
        assert float(r["test_accuracy_diff_points"]) == pytest.approx(100 * d.mean(), abs=1e-10)
        assert float(r["ci95"]) == pytest.approx(half, rel=1e-9)
        assert float(r["ci_low_points"]) == pytest.approx(100 * (d.mean() - half), rel=1e-9)
        assert float(r["p"]) == pytest.approx(p[label], rel=1e-9)
    # Holm over the five: H4 and H5 are pending but count in the family.
    order = sorted(p, key=p.get)
    adjusted = np.maximum.accumulate([min(1.0, (5 - k) * p[h]) for k, h in enumerate(order)])
    for h, expected in zip(order, adjusted):
        assert float(rows[h]["holm_p"]) == pytest.approx(expected, rel=1e-9)
    assert rows["H4"]["verdict"] == rows["H5"]["verdict"] == "pending (n = 0)"
    assert rows["H1"]["verdict"] == "first better"  # 2 points on 0.4-point noise, five seeds


def test_holm_adjusted_on_known_p_values(primaries):
    p = [0.01, 0.04, 0.03, 0.005, 0.5]
    assert primaries.holm_adjusted(p) == pytest.approx([0.04, 0.09, 0.09, 0.025, 0.5])
    assert [q < 0.05 for q in primaries.holm_adjusted(p)] == primaries.holm(p)
    assert primaries.holm_adjusted([0.2, 0.3]) == pytest.approx([0.4, 0.4])  # monotone, and capped below
    assert primaries.holm_adjusted([0.9, 0.8]) == pytest.approx([1.0, 1.0])
    # A pending comparison still counts in the family, ranked last.
    out = primaries.holm_adjusted([0.01, math.nan, 0.02])
    assert out[0] == pytest.approx(0.03) and out[2] == pytest.approx(0.04) and math.isnan(out[1])


def test_verdict_rules(primaries):
    v = primaries.verdict
    assert v(1, 0.05, math.nan, math.nan) == "pending (n = 1)"
    assert v(5, 0.03, 0.005, 0.001) == "first better"
    assert v(5, -0.03, 0.005, 0.001) == "second better"
    assert v(5, 0.002, 0.004, 0.4) == "equivalent (±1 pt)"
    assert v(5, 0.002, 0.009, 0.4) == "not settled"  # the interval reaches past +1 point
    assert v(5, 0.02, 0.03, 0.2) == "not settled"


def test_report_reads_verdicts_and_the_long_budget(primaries, tmp_path):
    work = tmp_path / "w"
    evaluate_stage(primaries, work, {"R1": [0.850, 0.852, 0.848, 0.851, 0.849],  # R1 − R2 within ±0.2 pt
                                     "R2": [0.849, 0.851, 0.849, 0.850, 0.850],
                                     "R6": [0.88, 0.881, 0.879, 0.882, 0.88],  # R6 − R7: 5 points, consistent
                                     "R7": [0.83, 0.832, 0.828, 0.831, 0.829],
                                     "R3": [0.84, 0.80, 0.86, 0.79, 0.85]})  # noisy: not settled against R1
    evaluate_stage(primaries, work, {"R1": [0.9, 0.91], "R3": [0.89]}, epochs=18)
    write_choices(work, {"learning_rate": RATES, "long_learning_rate": {"R1": 0.05, "R2": 0.05, "R3": 0.05},
                         "R5_margin": 0.2})
    primaries.report(work, primaries.finished_points(work), primaries.design.read_choices(work))
    rows = {(r["label"], r["budget_epochs"]): r for r in read_csv(work / "primaries.csv")}
    assert rows[("H3", "6")]["verdict"] == "equivalent (±1 pt)"
    assert rows[("H5", "6")]["verdict"] == "first better"
    assert rows[("H1", "6")]["verdict"] == "not settled"
    assert rows[("H4", "6")]["verdict"] == "pending (n = 0)"
    assert [k for k in rows if k[1] == "18"] == [("H1", "18"), ("H2", "18"), ("H3", "18")]
    assert {rows[(h, "18")]["holm_family"] for h in ("H1", "H2", "H3")} == {"H1–H3 at 18 epochs"}
    assert rows[("H1", "18")]["verdict"] == "pending (n = 1)"
    results = {(r["row"], r["epochs"]): r for r in read_csv(work / "results.csv")}
    assert len(results) == 7 + 3 and results[("R1", "18")]["n"] == "2" and results[("R5", "6")]["n"] == "0"
    r6 = np.array([0.88, 0.881, 0.879, 0.882, 0.88])
    assert float(results[("R6", "6")]["test_accuracy_mean"]) == pytest.approx(r6.mean())
    assert float(results[("R6", "6")]["test_accuracy_ci95"]) == pytest.approx(
        stats.t.ppf(0.975, 4) * r6.std(ddof=1) / np.sqrt(5))
    assert results[("R3", "6")]["train_logit_margin_over_tau"] == "nan"  # τ = 0: no units of τ


def test_report_on_a_partial_workdir_writes_every_file(primaries, tmp_path):
    work = tmp_path / "w"
    tune = [fake_point(work, overrides(primaries, row, lr, primaries.design.TUNING_SEED), val=0.7 + lr)
            for row in ("R1", "R4") for lr in primaries.design.LEARNING_RATES]
    record(work, "tune", tune)
    # One evaluation run, and one at a rate no longer chosen: left out, and said so.
    record(work, "evaluate", [fake_point(work, overrides(primaries, "R1", 0.05, 0)),
                              fake_point(work, overrides(primaries, "R1", 0.016, 1))])
    primaries.report(work, primaries.finished_points(work), {"learning_rate": {"R1": 0.05}})
    for name in ("results.csv", "primaries.csv", "report.md", "figures/forest.png", "figures/curves.png",
                 "figures/margins.png", "figures/calibration.png"):
        assert (work / name).stat().st_size > 0, name
    text = (work / "report.md").read_text()
    assert "**Incomplete**" in text and "pending (n = 0)" in text and "R5: pending" in text
    assert "1 evaluation run(s) at a rate or margin no longer chosen" in text
    assert "## Exploratory" in text
    results = {r["row"]: r for r in read_csv(work / "results.csv")}
    assert results["R1"]["n"] == "1" and results["R1"]["seeds"] == "0" and set(results) == set(primaries.design.ROWS)
    assert all(r["budget_epochs"] == "6" for r in read_csv(work / "primaries.csv"))  # no 18-epoch runs yet


def test_choose_waits_for_edges_and_measures_r5s_margin(primaries, tmp_path):
    work = tmp_path / "w"
    best = {"R1": 0.05, "R2": 0.16, "R3": 0.016, "R4": 0.05, "R6": 0.05, "R7": 0.05}  # R2, R3: at an edge
    implicit = {0.016: 0.11, 0.05: 0.2345, 0.16: 0.33}
    record(work, "tune", [fake_point(work, overrides(primaries, row, lr, primaries.design.TUNING_SEED),
                                     val=0.8 if lr == best[row] else 0.7, implicit=implicit[lr])
                          for row in best for lr in primaries.design.LEARNING_RATES])
    choices = primaries.choose(work)
    assert choices["learning_rate"] == {"R1": 0.05, "R4": 0.05, "R6": 0.05, "R7": 0.05}  # R2, R3 wait
    assert choices["R5_margin"] == 0.2345  # R4's implicit margin at its chosen rate, not at another
    seed = primaries.design.TUNING_SEED
    record(work, "extend", [fake_point(work, overrides(primaries, "R2", 0.5, seed), val=0.75),
                            fake_point(work, overrides(primaries, "R3", 0.005, seed), val=0.85)])
    choices = primaries.choose(work)
    assert choices["learning_rate"]["R2"] == 0.16  # the extension did worse: the edge stands
    assert "R3" not in choices["learning_rate"]  # 0.005 is better: a new edge, so it waits again
    assert json.loads((work / "choices.json").read_text())["validation"]["R3"]["0.005"] == 0.85
