"""The trainer on tiny models and the synthetic set: objectives, heads, resume, determinism, devices."""

import contextlib
import json
import os
import subprocess
import sys
import textwrap

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smoothmax import data, models, train
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


def interrupt_at_second_evaluation(monkeypatch, run):
    """Call ``run()`` with a KeyboardInterrupt raised at its second evaluation (a kill during epoch 2)."""
    real_evaluate, calls = train.evaluate, []

    def crash_on_second_eval(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill during epoch 2")
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(train, "evaluate", crash_on_second_eval)
    with pytest.raises(KeyboardInterrupt):
        run()
    monkeypatch.setattr(train, "evaluate", real_evaluate)


# The GPU recipe's training keys (configs/cifar10.py): Lookahead's slow weights are checkpointed state.
GPU_RECIPE_KEYS = {"data.alternate_flips": True, "model.bn_scale": False, "model.head_scale": 1 / 9,
                   "model.identity_init": True, "optimizer.bias_scale": 64.0, "optimizer.lookahead_every": 5,
                   "optimizer.lookahead_decay": 0.77}


def set_keys(c, keys):
    for key, value in keys.items():
        group, leaf = key.split(".")
        c[group][leaf] = value


@pytest.mark.parametrize("keys", [{}, GPU_RECIPE_KEYS], ids=["cpu-recipe", "gpu-recipe"])
def test_resume_after_interruption_matches_uninterrupted_run(tmp_path, tiny_data, monkeypatch, keys):
    c = tiny_config(name="softmax", temperature=0.5, final_temperature=0.1)
    c.epochs = 3
    # With the CPU recipe's settings: a fitted (and checkpointed) stem, short crops, translated views.
    c.model.stem, c.data.crop_pad, c.data.eval_flip, c.data.eval_translate = "whitened", 2, True, 2
    set_keys(c, keys)
    train.train_and_evaluate(c, tmp_path / "full", progress=False, dataset=tiny_data)

    interrupt_at_second_evaluation(
        monkeypatch, lambda: train.train_and_evaluate(c, tmp_path / "cut", progress=False, dataset=tiny_data))
    assert len(read_metrics(tmp_path / "cut")) == 1
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


# --------------------------------------------------------------------------- a workdir is one experiment


def test_changed_config_into_a_finished_workdir_is_refused(tmp_path, tiny_data):
    """Issue #11 failure 1: a changed learning rate used to reuse the old run and rewrite config.json."""
    from smoothmax.workdir import WorkdirError

    c = tiny_config(name="lse", temperature=0.5)
    c.epochs = 1
    first = train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    c.optimizer.learning_rate = 0.02
    with pytest.raises(WorkdirError, match=r"optimizer\.learning_rate: 0\.05 -> 0\.02.*--restart"):
        train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    # Keys that cannot change results may differ; the same experiment returns its finished result.
    c.optimizer.learning_rate = 0.05
    c.log_every_steps = 3
    assert train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data) == first


def test_restart_leaves_nothing_of_the_old_run(tmp_path, tiny_data, monkeypatch):
    """Issue #11 failure 2: a killed --restart run used to resume from the old run's checkpoints."""
    old = tiny_config(name="softmax")
    old.epochs = 3
    train.train_and_evaluate(old, tmp_path / "w", progress=False, dataset=tiny_data)
    new = tiny_config(name="softmax")
    new.epochs = 3
    new.optimizer.learning_rate = 0.02
    train.train_and_evaluate(new, tmp_path / "fresh", progress=False, dataset=tiny_data)

    interrupt_at_second_evaluation(monkeypatch, lambda: train.train_and_evaluate(
        new, tmp_path / "w", restart=True, progress=False, dataset=tiny_data))
    train.train_and_evaluate(new, tmp_path / "w", progress=False, dataset=tiny_data)
    assert read_metrics(tmp_path / "w") == read_metrics(tmp_path / "fresh")


def test_a_workdir_in_use_is_refused(tmp_path, tiny_data):
    from smoothmax.files import ExclusiveLock
    from smoothmax.workdir import WorkdirBusy

    with ExclusiveLock(tmp_path / ".lock"):
        with pytest.raises(WorkdirBusy, match=f"pid {os.getpid()}"):
            train.train_and_evaluate(tiny_config(), tmp_path, progress=False, dataset=tiny_data)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock"]


def test_summary_records_provenance_and_a_piped_log_has_epoch_lines(tmp_path, tiny_data, capsys):
    summary = train.train_and_evaluate(tiny_config(), tmp_path, progress=True, dataset=tiny_data)
    where = summary["provenance"]
    assert set(where["versions"]) >= {"jax", "jaxlib", "flax", "optax", "numpy"}
    assert where["backend"] == "cpu" and "xla_flags" in where and "git_commit" in where
    out = capsys.readouterr()
    assert "epoch 1/2: " in out.out and "epoch 2/2: " in out.out
    assert "\r" not in out.out + out.err  # no progress-bar refreshes in a log that is not a terminal


# --------------------------------------------------------------------------- kills, restarts, several hosts

KILLABLE_RUN = textwrap.dedent("""
    import json, os, signal, sys
    sys.path.insert(0, {tests!r})
    from test_train import tiny_config
    from smoothmax import train

    workdir, kill = sys.argv[1], sys.argv[2]
    kind, _, at = kill.partition(":")
    die = lambda: os.kill(os.getpid(), signal.SIGKILL)
    if kind == "step":  # SIGKILL at this process's at-th train step
        build = train.build_program

        def counting_build(*args, **kwargs):
            program, calls = build(*args, **kwargs), [0]
            step = program.train_step

            def counted(*a):
                calls[0] += 1
                if calls[0] == int(at):
                    die()
                return step(*a)

            program.train_step = counted
            return program

        train.build_program = counting_build
    elif kind == "save":  # SIGKILL while the checkpoint of epoch `at` is being written
        save = train.save

        def killing_save(manager, epoch, state):
            save(manager, epoch, state)
            if epoch == int(at):
                die()

        train.save = killing_save
    c = tiny_config(name="softmax", temperature=0.5, final_temperature=0.2)
    c.epochs = 3
    s = train.train_and_evaluate(c, workdir, progress=False)
    print(json.dumps({{"wall_seconds": s["wall_seconds"]}}))
""")


def test_runs_killed_at_seeded_moments_end_as_an_uninterrupted_run(tmp_path):
    """Issue #11 failure 7 and the fault-injection test: SIGKILLs at seeded steps and inside a checkpoint
    write, each followed by a rerun, end with the metrics of an uninterrupted run and at least its cost."""
    script = KILLABLE_RUN.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu")

    def run(workdir, kill="none"):
        return subprocess.run([sys.executable, "-c", script, str(workdir), kill], env=env, capture_output=True,
                              text=True, timeout=600)

    reference = run(tmp_path / "reference")
    assert reference.returncode == 0, reference.stderr[-3000:]
    steps = 3 * 512 // 64
    rng = np.random.default_rng(11)
    kills = [f"step:{rng.integers(2, steps // 2)}", "save:1", f"step:{rng.integers(steps // 3, steps)}"]
    for kill in kills:
        out = run(tmp_path / "killed", kill)
        assert out.returncode == -9, f"{kill}: {out.stderr[-3000:]}"
    final = run(tmp_path / "killed")
    assert final.returncode == 0, final.stderr[-3000:]
    assert read_metrics(tmp_path / "killed") == read_metrics(tmp_path / "reference")
    wall = json.loads(final.stdout.strip().splitlines()[-1])["wall_seconds"]
    assert wall >= json.loads(reference.stdout.strip().splitlines()[-1])["wall_seconds"]
    leftovers = [p.name for p in (tmp_path / "killed" / "checkpoints").iterdir() if "tmp" in p.name]
    assert leftovers == []


TWO_HOSTS = textwrap.dedent("""
    import json, sys
    import jax
    sys.path.insert(0, {tests!r})
    workdir, process, port = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{{port}}", num_processes=2, process_id=process)
    from test_train import tiny_config
    from smoothmax import train
    c = tiny_config(name="lse", temperature=0.5)
    c.optimizer.learning_rate = float(sys.argv[4])
    s = train.train_and_evaluate(c, workdir, progress=False)
    print(json.dumps({{"devices": s["devices"], "acc": s["test_accuracy"], "loss": s["test_loss"],
                      "processes": s["provenance"]["processes"]}}))
""")


def test_two_local_processes_train_like_one(tmp_path, tiny_data):
    """Several hosts for real: two processes joined by jax.distributed on 127.0.0.1 (CPU collectives) train
    a tiny config to the metrics of one process, each reading its half of every batch."""
    import socket

    script = TWO_HOSTS.format(tests=os.path.dirname(__file__))
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=1")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    def two_hosts(learning_rate):
        hosts = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "two"), str(i), port,
                                   str(learning_rate)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for i in (0, 1)]
        return hosts, [h.communicate(timeout=300) for h in hosts]

    hosts, outputs = two_hosts(0.05)
    for h, (_, err) in zip(hosts, outputs):
        assert h.returncode == 0, err[-3000:]
    single = train.train_and_evaluate(tiny_config(name="lse", temperature=0.5), tmp_path / "one", progress=False,
                                      dataset=tiny_data)
    for out, _ in outputs:
        two = json.loads(out.strip().splitlines()[-1])
        assert two["devices"] == 2 and two["processes"] == 2
        assert two["loss"] == pytest.approx(single["test_loss"], rel=2e-2)
        assert abs(two["acc"] - single["test_accuracy"]) <= 0.03
    assert read_metrics(tmp_path / "two")[-1]["epoch"] == 2
    # Another config into the same workdir: host 0 refuses it, and host 1 stops too instead of waiting.
    hosts, outputs = two_hosts(0.02)
    assert [h.returncode for h in hosts] == [1, 1]
    assert "optimizer.learning_rate: 0.05 -> 0.02" in outputs[0][1]
    assert "host 0 refused workdir" in outputs[1][1]


@contextlib.contextmanager
def no_device_reads():
    """Every device-to-host transfer refused: jax's guard (enforced on GPU and TPU), and on CPU, where the
    guard lets host-resident arrays through, the array's host value itself (``device_get``, ``float``,
    ``bool``, printing)."""
    from jax._src import array

    def refuse(*_, **__):
        raise AssertionError("a device-to-host transfer inside the step loop")

    saved = array.ArrayImpl._value, array.ArrayImpl.__array__
    array.ArrayImpl._value, array.ArrayImpl.__array__ = property(refuse), refuse
    try:
        with jax.transfer_guard_device_to_host("disallow_explicit"):
            yield
    finally:
        array.ArrayImpl._value, array.ArrayImpl.__array__ = saved


@pytest.mark.parametrize("members", [None, 2])
def test_steps_never_read_the_device_between_logging_points(tmp_path, tiny_data, monkeypatch, members):
    """Issue #24: the host's work per step and the step's dispatch transfer nothing back."""
    with no_device_reads(), pytest.raises(AssertionError, match="device-to-host"):
        jax.device_get(jax.numpy.ones(2) + 1)  # the guard itself bites
    monkeypatch.setattr(train, "step_guard", no_device_reads)
    c = tiny_config(name="softmax")
    c.evals_per_epoch, c.log_every_steps = 2, 3
    if members is None:
        train.train_and_evaluate(c, tmp_path, progress=True, dataset=tiny_data)
    else:
        cfgs = [c.copy_and_resolve_references() for _ in range(members)]
        for k, member in enumerate(cfgs):
            member.loss.temperature = 0.5 + k
        train.train_population(cfgs, [tmp_path / f"m{k}" for k in range(members)], tmp_path / "pop",
                               progress=True, dataset=tiny_data)


def test_tta_column_is_the_test_accuracy_with_those_views(tmp_path, tiny_data):
    """data.test_tta adds the 6-view test accuracy beside the metrics of the model's own logits."""
    c = tiny_config(name="softmax")
    c.data.test_tta = True
    plain = train.train_and_evaluate(c, tmp_path / "plain", progress=False, dataset=tiny_data)
    c.data.test_tta, c.data.eval_flip, c.data.eval_translate = False, True, 2
    views = train.train_and_evaluate(c, tmp_path / "views", progress=False, dataset=tiny_data)
    assert plain["test_tta_accuracy"] == views["test_accuracy"] != plain["test_accuracy"]
    assert views["test_tta_accuracy"] is None and "test_tta_accuracy" in read_metrics(tmp_path / "plain")[-1]


def test_validation_split_chooses_and_the_test_set_is_read_once(tmp_path, tiny_data):
    c = tiny_config(name="softmax")
    c.epochs = 3
    c.data.validation = 100
    summary = train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    rows = read_metrics(tmp_path)
    assert [("val_accuracy" in r, "test_accuracy" in r) for r in rows] == [(True, False)] * 2 + [(True, True)]
    assert summary["val_accuracy"] == rows[-1]["val_accuracy"] and summary["test_accuracy"] == rows[-1]["test_accuracy"]
    assert set(summary["phases"]) == {"data_seconds", "first_step_seconds", "training_seconds", "evaluation_seconds"}

    rest, (images, labels) = data.hold_out(tiny_data, 100)
    assert len(labels) == 100 and len(rest.train_labels) == len(tiny_data.train_labels) - 100
    counts, shares = np.bincount(labels, minlength=10), np.bincount(tiny_data.train_labels, minlength=10) / 512 * 100
    assert np.all(np.abs(counts - shares) < 1)  # stratified: each class keeps its share
    again = data.hold_out(tiny_data, 100)[1]
    assert np.array_equal(again[0], images)  # the same images for every run
    held = {img.tobytes() for img in images}
    assert not any(img.tobytes() in held for img in rest.train_images)


def test_evaluations_inside_epochs_give_a_curve_and_leave_training_alone(tmp_path, tiny_data):
    c = tiny_config(name="softmax")
    c.epochs, c.data.validation, c.data.batch_size = 2, 100, 51  # 8 steps an epoch
    plain = train.train_and_evaluate(c, tmp_path / "plain", progress=False, dataset=tiny_data)
    c.evals_per_epoch = 4
    curve = train.train_and_evaluate(c, tmp_path / "curve", progress=False, dataset=tiny_data)
    rows = read_metrics(tmp_path / "curve")
    assert [r["epoch"] for r in rows] == [0.25, 0.5, 0.75, 1, 1.25, 1.5, 1.75, 2]
    assert all("val_accuracy" in r for r in rows) and ["test_accuracy" in r for r in rows] == [False] * 7 + [True]
    assert curve["test_accuracy"] == plain["test_accuracy"] and curve["train_loss"] == plain["train_loss"]


def test_final_evaluation_measures_the_clean_training_set_and_calibration(tmp_path, tiny_data):
    c = tiny_config(name="lse", temperature=0.5)
    c.data.validation = 100
    c.data.eval_train = True
    summary = train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    final = summary["final"]
    for split in ("val", "test", "clean_train"):
        assert 0 <= final[f"{split}_accuracy"] <= 1
        assert final[f"{split}_logit_margin_over_tau_mean"] == pytest.approx(final[f"{split}_logit_margin_mean"] / 0.5)
        assert 1 <= final[f"{split}_gradient_participation"] <= 9  # between one rival and all C - 1
    assert final["posthoc_temperature"] > 0
    assert final["calibrated_test_nll"] <= final["test_ce"] + 0.05  # fitted on val, applied to test
    assert 0 <= final["test_ece"] <= 1 and 0 <= final["calibrated_test_ece"] <= 1
    assert "clean_train_accuracy" not in read_metrics(tmp_path)[0]  # the training set is read at the end only


def test_learned_temperature_moves_and_is_logged(tmp_path, tiny_data):
    c = tiny_config(name="softmax", temperature=1.0)
    c.model.head = "cosine"
    c.loss.learn_temperature = True
    c.optimizer.learning_rate = 0.2
    c.epochs = 4
    summary = train.train_and_evaluate(c, tmp_path, progress=False, dataset=tiny_data)
    taus = [r["temperature"] for r in read_metrics(tmp_path)]
    # Minimising L/τ on bounded cosine logits sharpens: τ falls from 1 (NormFace's scale grows), epoch after
    # epoch once warm-up is over.
    assert taus[1:] == sorted(taus[1:], reverse=True) and taus[-1] < 0.5
    assert summary["final_temperature"] == taus[-1]


@pytest.mark.parametrize("key,value", [("loss.name", "hard"), ("model.head", "linear"),
                                        ("loss.final_temperature", 0.1)])
def test_learned_temperature_refuses_what_it_cannot_learn(key, value):
    from smoothmax.config import ConfigError, validate_config

    c = tiny_config(name="softmax")
    c.model.head = "cosine"
    c.loss.learn_temperature = True
    validate_config(c)
    *parents, leaf = key.split(".")
    node = c
    for part in parents:
        node = node[part]
    node[leaf] = value
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate_config(c)


def lookahead_state(step, fast, slow, frozen):
    return train.TrainState({"w": fast}, {"k": frozen}, None, jnp.int32(step), ({"w": slow}, {"k": frozen}))


def test_lookahead_moves_the_slow_weights_at_syncs_and_restarts_the_fast_ones_there():
    spec = types.SimpleNamespace(lookahead_every=5, lookahead_decay=0.8, total_steps=12)
    fast, slow, frozen = jnp.array([1.0, 2.0]), jnp.array([0.0, 4.0]), jnp.array([0.3])
    between = train.lookahead(spec, lookahead_state(3, fast, slow, frozen))
    np.testing.assert_array_equal(between.params["w"], fast)
    np.testing.assert_array_equal(between.slow[0]["w"], slow)
    for step in (10, 12):  # a multiple of 5, and the last step
        d = 0.8 * (step / 12) ** 3
        synced = train.lookahead(spec, lookahead_state(step, fast, slow, frozen))
        np.testing.assert_allclose(synced.slow[0]["w"], d * slow + (1 - d) * fast, rtol=1e-6)
        np.testing.assert_array_equal(synced.params["w"], synced.slow[0]["w"])
        np.testing.assert_array_equal(synced.rest["k"], frozen)  # a leaf that never moves stays bit-exact


def test_bias_scale_multiplies_only_batchnorm_biases():
    c = tiny_config()
    c.model.bn_scale, c.model.head_scale = False, 1 / 9
    c.optimizer.bias_scale, c.optimizer.weight_decay, c.total_steps = 64.0, 0.0, 10
    spec = train.build_program(c, np.zeros(3), np.ones(3), 10).spec
    state = train.create_train_state(c, spec, 10)  # the train step's tree: Variables holding arrays
    grads = jax.tree.map(jnp.ones_like, state.params)
    opt_state = spec.optimizer.init(state.params)
    for _ in range(2):  # the warm-up's first step has rate 0
        updates, opt_state = spec.optimizer.update(grads, opt_state, state.params)
    kernel = float(updates["model"]["blocks"][2]["conv2"]["kernel"][...].ravel()[0])
    seen = {}
    for path, value in jax.tree_util.tree_leaves_with_path(updates):
        names = tuple(str(k.key) for k in path if isinstance(k, jax.tree_util.DictKey))
        seen[names] = float(value.ravel()[0]) / kernel  # every leaf saw the same gradients
    assert seen[("model", "blocks", "0", "bn1", "bias")] == seen[("model", "stem_bn", "bias")] == 64.0
    assert seen[("model", "head", "dense", "bias")] == seen[("model", "head", "dense", "kernel")] == 1.0
    assert seen[("model", "blocks", "2", "conv2", "kernel")] == 1.0
    assert not any(names[-1] == "scale" for names in seen)  # bn_scale=False: no BatchNorm scales to train


def test_the_device_resident_feed_gives_the_host_path_batches(tiny_data):
    c = tiny_config()
    program = train.build_program(c, tiny_data.mean, tiny_data.std, tiny_data.num_classes)
    feed = train.TrainingFeed(program, tiny_data.train_images, tiny_data.train_labels)
    assert feed.resident  # one process
    flips = data.epoch_flips(len(tiny_data.train_labels), 0, 3)
    idx = data.epoch_permutation(len(tiny_data.train_labels), 64, 0, 3)[1]
    feed.epoch(flips)
    on_device = feed.batch(idx)
    feed.resident = False
    feed.epoch(flips)
    from_host = feed.batch(idx)
    for a, b, expected in zip(on_device, from_host, (tiny_data.train_images, tiny_data.train_labels, flips)):
        np.testing.assert_array_equal(np.asarray(a), expected[idx])
        np.testing.assert_array_equal(np.asarray(b), expected[idx])
