"""Sweeps: grid expansion and point identity, seeds added by a rerun, CLI overrides, invocations in sweep.json,
the report over seeds, shards that meet at one point, population keys, and kills at seeded moments."""

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from smoothmax import identity, report, sweep, train
from smoothmax.config import ConfigError
from smoothmax.files import ExclusiveLock
from tests.test_train import tiny_config

REPO = Path(__file__).resolve().parents[1]

SWEEP_CONFIG = '''
from smoothmax.sweep import product
from tests.test_train import tiny_config

def get_config(arg=""):
    c = tiny_config()  # as test_population_matches_sequential_runs's: the tests share compiled programs
    c.model.widths = (8, 8, 8)
    return c

def get_sweep(arg=""):
    return {grid}
'''

# Three populations: hard over m, lse on a cosine head and softmax on a linear one over τ.
FULL_GRID = '''(product({"loss.name": ["hard"], "loss.temperature": [0.0], "loss.margin": [0.0, 1.0]})
            + product({"loss.name": ["lse"], "loss.temperature": [0.1, 1.0], "model.head": ["cosine"]})
            + product({"loss.name": ["softmax"], "loss.temperature": [0.1, 1.0], "model.head": ["linear"]}))'''
# Two points of one population, no seed in the grid.
SMALL_GRID = 'product({"loss.name": ["softmax"], "loss.temperature": [0.1, 1.0]})'


def write_sweep_config(tmp_path, grid=FULL_GRID) -> str:
    path = tmp_path / "sweep_cfg.py"
    path.write_text(SWEEP_CONFIG.format(grid=grid))
    return str(path)


def point_dirs(work) -> list[str]:
    return sorted(p.name for p in (work / "points").iterdir())


def summaries_of(work) -> dict:
    return {p.parent.name: p.read_bytes() for p in work.glob("points/*/summary.json")}


def test_grid_expansion_names_and_shards(tmp_path):
    points = sweep.load_sweep(write_sweep_config(tmp_path))
    names = [p["name"] for p in points]
    assert len(points) == 6 and len(set(names)) == 6
    lse = next(p for p in points if p["name"].startswith("lse_t0.1_cosine-"))
    assert lse["config"].loss.temperature == 0.1 and lse["config"].model.head == "cosine"
    # The name is the grid's label and a short hash of the point's canonical form.
    assert lse["name"] == f"lse_t0.1_cosine-{identity.short_hash(identity.canonical(lse['config']))}"
    assert names[0].startswith("hard_t0_m0-")
    shards = [points[i::3] for i in range(3)]
    assert sorted(p["name"] for s in shards for p in s) == sorted(names)  # disjoint and complete
    assert sweep.parse_shard("1/3") == (1, 3)
    with pytest.raises(ConfigError):
        sweep.parse_shard("3/3")
    # Populations: same everything but τ, m, seed.
    groups = sweep.populations(points)
    assert sorted(len(g) for g in groups) == [2, 2, 2]
    assert sweep.product({"a": [1, 2], "b": ["x"]}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    # CLI overrides reach every point; keys that cannot change results leave the identity alone.
    assert all(p["config"].optimizer.learning_rate == 0.02
               for p in sweep.load_sweep(write_sweep_config(tmp_path), ["optimizer.learning_rate=0.02"]))
    logged = sweep.load_sweep(write_sweep_config(tmp_path), ["log_every_steps=7"])
    assert [p["name"] for p in logged] == names
    # Two grid points that are one experiment (τ means nothing to hard) are an error.
    same = write_sweep_config(tmp_path, grid='[{"loss.name": "hard", "loss.temperature": t} for t in (0.0, 0.5)]')
    with pytest.raises(ConfigError, match=r"hard_t0 and hard_t0\.5 .*same experiment"):
        sweep.load_sweep(same)


def test_seed_rerun_trains_beside_and_the_report_groups_seeds(tmp_path, capsys):
    """Issue #11 failure 3: `--config.seed=1` into an existing sweep used to find every point finished."""
    cfg = write_sweep_config(tmp_path, grid=SMALL_GRID)
    work = tmp_path / "work"
    sweep.run_sweep(cfg, work, progress=False)
    seed0 = summaries_of(work)
    assert len(seed0) == 2
    sweep.run_sweep(cfg, work, overrides=["seed=1"], progress=False)
    assert len(point_dirs(work)) == 4 and "2 to run" in capsys.readouterr().out
    assert {k: v for k, v in summaries_of(work).items() if k in seed0} == seed0  # nothing lost or retrained
    seeds = sorted(json.loads(v)["seed"] for v in summaries_of(work).values())
    assert seeds == [0, 0, 1, 1]
    # Every invocation is recorded once; a repeat adds nothing.
    sweep.run_sweep(cfg, work, overrides=["seed=1"], progress=False)
    invocations = sweep.read_invocations(work)
    assert [inv["overrides"] for inv in invocations] == [[], ["seed=1"]]
    assert {p["name"] for inv in invocations for p in inv["points"]} == set(point_dirs(work))

    # The report reads the recorded points only (not a stray folder) and pools the seeds of a point.
    stray = work / "points" / "stray-0123456789"
    stray.mkdir()
    (stray / "summary.json").write_text("not json: reading it would fail")
    results = report.load_results(work, report.recorded_points(work))
    assert sorted(r["name"] for r in results) == sorted(summaries_of(work).keys() - {stray.name})
    rows = report.summary_table(results)
    text = report.markdown_table(rows)
    assert [r["n"] for r in rows] == [2, 2]
    for r in rows:
        acc = [json.loads(v)["test_accuracy"] for k, v in summaries_of(work).items()
               if k.startswith(f"softmax_t{r['temperature']:g}-")]
        assert r["test_accuracy_mean"] == pytest.approx(np.mean(acc))
        # 95 % t-interval with ddof = 1: t(0.975, 1) = 12.706.
        assert r["test_accuracy_ci95"] == pytest.approx(12.706 * np.std(acc, ddof=1) / np.sqrt(2), rel=1e-4)
        assert f"{100 * r['test_accuracy_mean']:.2f} ± {100 * r['test_accuracy_ci95']:.2f} % (n = 2)" in text


def test_a_key_set_by_grid_and_command_line_is_an_error(tmp_path):
    """Issue #11 failure 3: grid overrides used to beat the command line's without a word."""
    cfg = write_sweep_config(tmp_path, grid=SMALL_GRID)
    with pytest.raises(ConfigError, match=r"loss\.temperature set both by the grid"):
        sweep.run_sweep(cfg, tmp_path / "work", overrides=["loss.temperature=0.5"], progress=False)
    assert not (tmp_path / "work").exists()


def test_a_bad_point_fails_before_any_work(tmp_path, monkeypatch, capsys):
    from smoothmax.cli import main

    def no_work(*args, **kwargs):
        raise AssertionError("work started before validation")

    monkeypatch.setattr(sweep, "load_data", no_work)
    monkeypatch.setattr(sweep, "dataset_identity", no_work)
    cfg = write_sweep_config(tmp_path, grid='product({"loss.name": ["lse"], "loss.temperature": [0.1, -0.5]})')
    assert main(["sweep", "--config", cfg, "--workdir", str(tmp_path / "work"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "lse_t-0.5" in err and "loss.temperature" in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()


def test_concurrent_shards_keep_every_invocation(tmp_path):
    start = threading.Barrier(8)

    def record(i):
        start.wait()
        sweep.record_invocation(tmp_path, {"config": "c.py", "overrides": [f"seed={i}"], "points": []})

    threads = [threading.Thread(target=record, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    recorded = sorted(inv["overrides"][0] for inv in sweep.read_invocations(tmp_path))
    assert recorded == [f"seed={i}" for i in range(8)]


def test_a_point_in_use_is_skipped_and_a_killed_holders_lock_is_free(tmp_path, capsys):
    """Two shards at one point: the second skips it while the first lives, and trains it once the first dies."""
    cfg = write_sweep_config(tmp_path, grid=SMALL_GRID)
    work = tmp_path / "work"
    first, second = (work / "points" / p["name"] for p in sweep.load_sweep(cfg))
    held = ExclusiveLock(first / ".lock").acquire()  # a live shard in this process
    holder = subprocess.Popen(  # a shard in another process, killed below
        [sys.executable, "-c", "import sys, time; from smoothmax.files import ExclusiveLock; "
         "ExclusiveLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)", str(second / ".lock")],
        cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert sweep.run_sweep(cfg, work, progress=False) == []
        out = capsys.readouterr().out
        assert f"skipped {first.name}" in out and f"skipped {second.name}" in out
        assert "2 point(s) skipped, in use by another process" in out and "pid" in out
        assert not list(work.glob("points/*/summary.json"))
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        done = sweep.run_sweep(cfg, work, progress=False)
        assert [s["name"] for s in done] == [second.name]
    finally:
        holder.kill()
        holder.wait()
        held.release()
    assert [s["name"] for s in sweep.run_sweep(cfg, work, progress=False)] == [first.name, second.name]


def test_population_folder_is_keyed_by_the_whole_group(tmp_path):
    cfg = write_sweep_config(tmp_path, grid=SMALL_GRID + ' + [{"loss.name": "softmax", "loss.temperature": 0.3}]')
    points = sweep.load_sweep(cfg)
    (group,) = sweep.populations(points)
    key = sweep.population_key(group)
    # The key is the group's, whatever its order; it changes with any member's config.
    assert sweep.population_key(group[::-1]) == key
    assert sweep.population_key(sweep.load_sweep(cfg, ["optimizer.learning_rate=0.02"])) != key
    assert sweep.population_key(group[:2]) != key
    # None finished: the whole group trains; some finished: the others train as their own population.
    assert sweep.population_plan(group, group) == sorted(group, key=lambda p: p["hash"])
    assert sweep.population_plan(group, group[1:]) == sorted(group[1:], key=lambda p: p["hash"])

    work = tmp_path / "work"
    sweep.run_sweep(cfg, work, mode="vmap", progress=False)
    assert [p.name for p in (work / "populations").iterdir()] == [key]
    before = summaries_of(work)
    assert len(before) == 3
    sweep.run_sweep(cfg, work, mode="vmap", progress=False)  # all finished: nothing trains
    assert summaries_of(work) == before
    # The grid grows by three points of the same population: they train as their own (three members: the
    # compiled program is reused), the rest is kept (τ = 0.3, relabelled "t0.3" as its grid no longer names
    # the objective, keeps its folder).
    cfg = write_sweep_config(tmp_path, grid=SMALL_GRID + ' + product({"loss.temperature": [0.3, 3.0, 0.03, 10.0]})')
    new = [p for p in sweep.load_sweep(cfg) if p["hash"] not in {p["hash"] for p in group}]
    assert len(new) == 3
    sweep.run_sweep(cfg, work, mode="vmap", progress=False)
    assert sorted(p.name for p in (work / "populations").iterdir()) == sorted([key, sweep.population_key(new)])
    assert {k: v for k, v in summaries_of(work).items() if k in before} == before
    assert len(summaries_of(work)) == 6


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
    pop = train.train_population(members, [tmp_path / f"p{i}" for i in range(3)], tmp_path / "pop", progress=False,
                                 dataset=ds)
    for i, c in enumerate(members):
        seq = train.train_and_evaluate(c, tmp_path / f"s{i}", progress=False, dataset=ds)
        # The vmapped and the single program round differently (1e-7 after a step); a max-pool or global max
        # whose near-tied inputs swap then amplifies that: one member ends 0.23 % apart in test loss after
        # 16 steps. A member trained with another's τ, m or seed would be tens of percent apart.
        assert pop[i]["test_accuracy"] == pytest.approx(seq["test_accuracy"], abs=0.011)
        assert pop[i]["test_loss"] == pytest.approx(seq["test_loss"], rel=1e-2)
        assert pop[i]["train_loss"] == pytest.approx(seq["train_loss"], rel=1e-2)
    assert pop[0]["population"] == 3
    with pytest.raises(ValueError, match="may differ only in"):
        other = base.copy_and_resolve_references()
        other.model.head = "cosine"
        train.train_population([base, other], [tmp_path / "x", tmp_path / "y"], tmp_path / "c2", progress=False,
                               dataset=ds)


def test_sweep_runs_shards_and_writes_report(tmp_path):
    cfg = write_sweep_config(tmp_path)
    work = tmp_path / "work"
    summaries = sweep.run_sweep(cfg, work, shard=(0, 2), progress=False)
    assert len(summaries) == 3 and len(point_dirs(work)) == 3
    before = summaries_of(work)
    sweep.run_sweep(cfg, work, shard=(0, 2), progress=False)  # nothing to do
    assert summaries_of(work) == before
    sweep.run_sweep(cfg, work, shard=(1, 2), progress=False)
    assert len(point_dirs(work)) == 6 and len(sweep.read_invocations(work)) == 1
    text = report.write_report(work).read_text()
    assert "6 finished points in 6 rows" in text and "| lse | 0.1 | 0 | cosine |" in text
    assert text.count("(n = 1)") == 6
    assert not re.search(r"\d ± \d", text)  # one seed: no interval
    assert "figures/accuracy_vs_temperature.png" in text
    for fig in ("accuracy_vs_temperature", "training_curves", "logit_margins", "implicit_margin", "loss_shapes",
                "gradient_support", "cosine_floor"):
        png = work / "figures" / f"{fig}.png"
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    assert (work / "results.csv").read_text().startswith("objective,temperature")


def test_report_of_a_sweep_with_a_validation_split(tmp_path):
    """Its curves are the validation split's: the test set is read at the end only."""
    cfg = write_sweep_config(tmp_path, SMALL_GRID)
    work = tmp_path / "work"
    sweep.run_sweep(cfg, work, progress=False, overrides=["data.validation=100", "epochs=2"])
    assert "2 finished points" in report.write_report(work).read_text()
    assert (work / "figures" / "training_curves.png").exists()


def _events(work) -> int:
    """How far a sweep has come: evaluations written plus points finished (grows as it trains)."""
    lines = sum(len(p.read_text().splitlines()) for p in work.glob("points/*/metrics.jsonl"))
    return lines + len(list(work.glob("points/*/summary.json")))


def test_sweep_killed_at_seeded_moments_ends_as_an_uninterrupted_one(tmp_path):
    """Fault injection: SIGKILL at seeded moments, rerun until done; nothing lost, nothing trained twice."""
    cfg = write_sweep_config(tmp_path, grid='product({"loss.name": ["softmax"], "loss.temperature": [0.1, 0.3, 1.0]})')
    reference = {s["name"]: s for s in sweep.run_sweep(cfg, tmp_path / "ref", progress=False)}
    total = len(reference) * 3  # two evaluations and a summary per point; seed 14 kills at 2 and 7
    moments = sorted(np.random.default_rng(14).choice(np.arange(1, total), size=2, replace=False))
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "smoothmax", "sweep", "--config", cfg, "--workdir", str(work), "--no-progress"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    first_seen = {}  # each point's summary as first written: it must never change
    for moment in moments:
        log = open(tmp_path / "stderr.txt", "w+")
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=log)
        while proc.poll() is None:
            if work.exists():
                first_seen = {**summaries_of(work), **first_seen}
                if _events(work) >= moment:
                    proc.send_signal(signal.SIGKILL)
                    break
            time.sleep(0.02)
        # A sweep that ended before its moment fails here.
        assert proc.wait(timeout=300) == -signal.SIGKILL, (tmp_path / "stderr.txt").read_text()[-2000:]
        log.close()
        first_seen = {**summaries_of(work), **first_seen}
    assert 1 <= len(first_seen) < len(reference)  # the kills left finished and unfinished points
    sweep.run_sweep(cfg, work, progress=False)  # the last rerun, in this process: its program is compiled
    first_seen = {**summaries_of(work), **first_seen}
    assert summaries_of(work) == first_seen and set(first_seen) == set(reference)
    metrics = ("test_accuracy", "test_loss", "test_ce", "train_loss", "train_accuracy", "logit_margin_mean")
    for name, ref in reference.items():
        got = json.loads(first_seen[name])
        assert {k: got[k] for k in metrics} == {k: ref[k] for k in metrics}, name
        rows = (work / "points" / name / "metrics.jsonl").read_text()
        assert rows == (tmp_path / "ref" / "points" / name / "metrics.jsonl").read_text()
        assert got["wall_seconds"] > 0
    assert len(sweep.read_invocations(work)) == 1 and len(point_dirs(work)) == 3


def test_report_rejects_an_empty_workdir(tmp_path):
    with pytest.raises(FileNotFoundError, match="no sweep.json"):
        report.write_report(tmp_path)
    sweep.record_invocation(tmp_path, {"config": "c.py", "overrides": [], "points": [{"name": "a-0", "hash": "0"}]})
    with pytest.raises(FileNotFoundError, match="no finished points"):
        report.write_report(tmp_path)


def test_report_interval_and_single_seed_text():
    assert np.isnan(report.t_interval([0.5]))
    # t(0.975, 2) = 4.303; values 0.1, 0.2, 0.3: std (ddof = 1) 0.1.
    assert report.t_interval([0.1, 0.2, 0.3]) == pytest.approx(4.303 * 0.1 / np.sqrt(3), rel=1e-4)


def test_report_rows_pool_seeds_and_name_the_other_axes():
    def point(name, acc, **form):
        metrics = {c: 0.5 for c in report.MEAN_COLUMNS}
        return {"name": name, "objective": "lse", "temperature": 0.1, "margin": 0.0, "head": "linear",
                "test_accuracy": acc, "canonical": {"loss.name": "lse", "data.source": "synthetic", **form},
                **metrics}

    results = [point("a", 0.5, **{"optimizer.learning_rate": 0.1}),
               point("b", 0.7, **{"optimizer.learning_rate": 0.1, "seed": 1}),
               point("c", 0.9, **{"optimizer.learning_rate": 0.1, "data.seed": 3}),
               point("d", 0.4)]  # the default learning rate, one seed
    rows = report.summary_table(results)
    assert [(r["axes"], r["n"]) for r in rows] == [("optimizer.learning_rate=0.1", 3),
                                                  ("optimizer.learning_rate=0.2", 1)]
    assert rows[0]["test_accuracy_mean"] == pytest.approx(0.7)
    text = report.markdown_table(rows)
    assert "| other axes |" in text and "70.00 ± 49.68 % (n = 3)" in text and "40.00 % (n = 1)" in text


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
        pop = train.train_population(members, [f"{{out}}/p{{i}}" for i in range(4)], f"{{out}}/pop",
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
