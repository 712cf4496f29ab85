"""Sweeps: a grid of runs declared in a config file, resumable, shardable, safe to run twice at once.

A sweep config file defines ``get_config(arg)`` (the base run) and ``get_sweep(arg)`` (a list of override
dicts, one per point; :func:`product` builds grids). Command-line overrides (``--config.key=value``) apply to
every point; a key that both the grid and the command line set is an error that names it. ``smoothmax sweep``
writes

    workdir/sweep.json                  every invocation: its config, overrides, population mode and points
    workdir/points/<name>-<hash>/       each point: experiment.json, config.json, metrics.jsonl, summary.json
    workdir/populations/<hash>/         checkpoints of a population trained as one vmapped program

**A point's identity** is the canonical form of its resolved config (:func:`smoothmax.identity.canonical`:
the dataset by content, keys at their defaults and keys the run ignores left out). Its folder is the grid's
readable name plus a short hash of that form, ``lse_t0.1_m0_linear-3fa9c2d1e0``: a rerun with
``--config.seed=1`` on a grid that does not set ``seed`` makes new folders beside the seed-0 ones, and a
rerun with the same resolved configs finds its points again. The hash alone is the identity: a point whose
hash an existing folder carries uses that folder whatever its label, so a grid that reorders its keys or
adds ``"seed": [0]`` keeps its finished points. Two points of one grid with the same form are an error.
Every point is validated (:func:`smoothmax.config.validate_config`) before anything is read or written; the
dataset's content hash is taken once per distinct ``data.name``/``data.path``.

**Invocations.** ``sweep.json`` lists every distinct invocation (config, overrides, population mode, backend
and all its points with their overrides and hash); a rerun of the same command adds nothing. It is
rewritten read-modify-write under a lock (``.sweep.lock``), so shards starting together keep each other's
entries. The report reads the points of every recorded invocation and nothing else.

**Shards and locks.** ``--shard i/n`` takes every n-th point (i = 0 … n−1). A point trains only while its
process holds the point folder's lock (the workdir claim, :mod:`smoothmax.workdir`): a second process that
reaches the same point (a requeued task, the same shard started twice) skips it and says so. The lock is a
``flock``, which dies with its holder, so a task requeued after a SIGKILL resumes the point at once.

**Populations.** Points of a shard that differ only in :data:`~smoothmax.train.MEMBER_KEYS` (τ, m, seed,
learning rate) form a group: one data stream and one compiled program train them. How depends on the backend
(``mode="auto"``): on GPU/TPU the step is ``vmap``ped over the members' stacked states (a small model
leaves an accelerator idle, so K members cost little more than one); on CPU, where a ``vmap`` over conv nets
runs ~3x slower than the same members one after another, members run in turn through the same compiled
step, each checkpointed in its own point folder. In vmap mode a group trains as follows:

| members of the group finished | what trains                         | checkpoints in ``populations/<key>``  |
|-------------------------------|-------------------------------------|---------------------------------------|
| none                          | the whole group                     | key of the whole group                |
| some                          | the unfinished members, as one      | key of the unfinished members' set    |
|                               | population (one member: alone, in   |                                       |
|                               | its point folder)                   |                                       |
| all                           | nothing                             |                                       |

where a population's key is a short hash of its members' shared (static) canonical form and the sorted
hashes of all its members, finished or not, so it never changes while the population trains: a kill and
rerun resumes its checkpoints. Members of a population finish together; only a kill in the moment between
their summary writes leaves a group partly finished, and then the rest retrain (correctly, but from
scratch) as their own population. Finished members are never retrained.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
from collections import defaultdict
from pathlib import Path

import jax

from smoothmax.config import ConfigError, apply_override, load_config, validate_config
from smoothmax.files import ExclusiveLock, atomic_write_text
from smoothmax.identity import canonical, dataset_identity, short_hash
from smoothmax.train import MEMBER_KEYS, load_data, static_key, train_and_evaluate, train_population
from smoothmax.workdir import WorkdirBusy, read_record

SHORT_NAMES = {"loss.name": "", "loss.temperature": "t", "loss.margin": "m", "model.head": "", "seed": "s"}
SWEEP_FILE = "sweep.json"
SWEEP_LOCK = ".sweep.lock"


def product(axes: dict) -> list[dict]:
    """Every combination of ``{"loss.temperature": [...], "model.head": [...], ...}`` as override dicts."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def beyond_edge(tried: dict, series) -> list[float]:
    """The values of ``series`` (an increasing grid, e.g. learning rates) to try next for a row whose
    candidates ``{value: score}`` have finished: the neighbour beyond the best one where the best is the
    highest or the lowest of ``series`` tried (none once the best is inside, or at the series' end).
    Candidates outside ``series`` compete for best but are never an edge."""
    ladder = sorted(v for v in tried if v in series)
    best = max(sorted(tried), key=lambda v: tried[v])
    out = []
    for edge, step in ((ladder[-1], 1), (ladder[0], -1)):
        i = series.index(edge) + step
        if best == edge and 0 <= i < len(series):
            out.append(series[i])
    return out


def point_label(overrides: dict) -> str:
    """The readable part of a point's name: ``lse_t0.1_m0_linear`` (known keys shortened, others key=value)."""
    parts = []
    for key, value in overrides.items():
        short = SHORT_NAMES.get(key, key.split(".")[-1] + "=")
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{short}{text}")
    name = "_".join(parts) or "base"
    return "".join(ch if ch.isalnum() or ch in "._=-" else "-" for ch in name)


def _load_grid(spec: str) -> list[dict]:
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("smoothmax_sweep_config", path)
    if module_spec is None or not Path(path).is_file():
        raise ConfigError(f"sweep config file {path} does not exist")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"{path} defines no get_sweep(arg): it is not a sweep config")
    return list(module.get_sweep(arg) if arg else module.get_sweep())


def _point_config(spec: str, label: str, grid_overrides: dict, overrides):
    """The base config with the grid's and the command line's overrides (disjoint keys), validated."""
    try:
        config = load_config(spec, overrides)
        for key, value in grid_overrides.items():
            apply_override(config, f"{key}={value}")
        validate_config(config)
    except ConfigError as err:
        raise ConfigError(f"sweep point {label}: {err}") from None
    return config


def load_sweep(spec: str, overrides=()) -> list[dict]:
    """The points of a sweep config: ``[{"name", "overrides", "config", "form", "hash"}, ...]`` in
    declaration order. Every point is validated before the dataset's files are hashed."""
    grid = _load_grid(spec)
    cli_keys = {item.partition("=")[0] for item in overrides}
    both = sorted(cli_keys & {key for point in grid for key in point})
    if both:
        raise ConfigError(f"{', '.join(both)} set both by the grid of {spec} and on the command line: drop "
                          "the command-line override, or change the grid")
    configs = [_point_config(spec, point_label(p), p, overrides) for p in grid]
    sources = {}  # one content hash per distinct data source
    points, seen = [], {}
    for grid_overrides, config in zip(grid, configs):
        source = (config.data.name, config.data.path)
        if source not in sources:
            sources[source] = dataset_identity(config)
        form = canonical(config, dataset=sources[source])
        label, digest = point_label(grid_overrides), short_hash(form)
        if digest in seen:
            raise ConfigError(f"sweep points {seen[digest]} and {label} of {spec} are the same experiment")
        seen[digest] = label
        points.append({"name": f"{label}-{digest}", "overrides": grid_overrides, "config": config,
                       "form": form, "hash": digest})
    return points


def parse_shard(text: str) -> tuple[int, int]:
    index, _, count = text.partition("/")
    try:
        i, n = int(index), int(count)
    except ValueError:
        raise ConfigError(f"--shard {text!r} is not of the form i/n") from None
    if not 0 <= i < n:
        raise ConfigError(f"--shard {text}: need 0 <= i < n")
    return i, n


def populations(points: list[dict]) -> list[list[dict]]:
    """Points grouped by everything but :data:`MEMBER_KEYS`, in declaration order."""
    groups = defaultdict(list)
    for point in points:
        groups[static_key(point["config"])].append(point)
    return list(groups.values())


def population_key(members: list[dict]) -> str:
    """A population's folder name: its members' shared canonical form and their sorted hashes."""
    static = {k: v for k, v in members[0]["form"].items() if k not in MEMBER_KEYS}
    return short_hash({"static": static, "members": sorted(p["hash"] for p in members)})


def population_plan(group: list[dict], pending: list[dict]) -> list[dict]:
    """The members of ``group`` to train as one population when ``pending`` are unfinished (the module's
    table), sorted by hash so that the population's claim does not depend on the grid's order."""
    return sorted(group if len(pending) == len(group) else pending, key=lambda p: p["hash"])


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "vmap"
    if mode not in ("vmap", "sequential"):
        raise ConfigError(f"unknown population mode {mode!r}: choose auto, vmap or sequential")
    return mode


def read_invocations(workdir) -> list[dict]:
    """The invocations recorded in ``workdir/sweep.json`` (none when there is no such file)."""
    path = Path(workdir) / SWEEP_FILE
    if not path.exists():
        return []
    recorded = json.loads(path.read_text())
    if "invocations" not in recorded:
        raise ConfigError(f"{path} lists no invocations: it was written by an older smoothmax; choose a new "
                          "--workdir")
    return recorded["invocations"]


def record_invocation(workdir, invocation: dict) -> None:
    """Add ``invocation`` to ``sweep.json`` unless it is there already: read, append and rewrite under the
    sweep's lock, so that shards starting together keep each other's entries."""
    workdir = Path(workdir)
    lock = ExclusiveLock(workdir / SWEEP_LOCK).acquire(wait=True)
    try:
        invocations = read_invocations(workdir)
        if invocation not in invocations:
            atomic_write_text(workdir / SWEEP_FILE, json.dumps({"invocations": invocations + [invocation]},
                                                               indent=2))
    finally:
        lock.release()


def _train_group(group: list[dict], pending: list[dict], workdir: Path, mode: str, dataset,
                 progress: bool) -> list[str]:
    """Train the ``pending`` points of ``group`` (as a population, or one after another); return the names
    of those skipped because another process holds them."""
    if mode == "vmap" and len(pending) > 1:
        members = population_plan(group, pending)
        key = population_key(members)
        try:
            train_population([p["config"] for p in members], [workdir / "points" / p["name"] for p in members],
                             workdir / "populations" / key, progress=progress, dataset=dataset,
                             forms=[p["form"] for p in members])
        except WorkdirBusy as err:
            print(f"sweep: skipped population {key}: {err}", flush=True)
            return [p["name"] for p in members]
        return []
    busy = []
    for point in pending:
        print(f"sweep: point {point['name']}", flush=True)  # which run the lines below belong to
        try:
            train_and_evaluate(point["config"], workdir / "points" / point["name"], progress=progress,
                               dataset=dataset, form=point["form"])
        except WorkdirBusy as err:
            print(f"sweep: skipped {point['name']}: {err}", flush=True)
            busy.append(point["name"])
    return busy


def adopt_folders(points: list[dict], workdir: Path) -> list[dict]:
    """Name each point by the folder that already holds its hash, if any: the hash is the identity, the
    label only reads well (a grid that reorders its keys or adds ``"seed": [0]`` keeps its finished points)."""
    root = workdir / "points"
    folders = {d.name.rpartition("-")[2]: d.name for d in sorted(root.iterdir())} if root.is_dir() else {}
    return [{**p, "name": folders.get(p["hash"], p["name"])} for p in points]


def is_finished(workdir, name: str) -> bool:
    """Whether the point folder ``name`` of a sweep workdir holds a finished run."""
    return (Path(workdir) / "points" / name / "summary.json").exists()


def _finished(workdir: Path, points: list[dict]) -> set[str]:
    return {p["name"] for p in points if is_finished(workdir, p["name"])}


def load_point(folder: Path) -> dict:
    """A finished point's summary with its ``name``, ``canonical`` form and metric ``history``."""
    summary = json.loads((folder / "summary.json").read_text())
    history = folder / "metrics.jsonl"
    return {**summary, "name": folder.name, "canonical": read_record(folder)["canonical"],
            "history": [json.loads(l) for l in history.read_text().splitlines()] if history.exists() else []}


def run_sweep(spec: str, workdir, *, shard: tuple[int, int] = (0, 1), mode: str = "auto", overrides=(),
              progress: bool = True) -> list[dict]:
    """Run this shard's unfinished points; return the summaries (with ``name`` and ``canonical``) of its
    finished points."""
    workdir = Path(workdir)
    overrides = list(overrides)
    points = adopt_folders(load_sweep(spec, overrides), workdir)
    mode = resolve_mode(mode)
    index, count = shard
    if jax.process_index() == 0:
        listing = [{"name": p["name"], "overrides": p["overrides"], "hash": p["hash"]} for p in points]
        record_invocation(workdir, {"config": spec, "overrides": overrides, "population_mode": mode,
                                    "backend": jax.default_backend(), "points": listing})
    mine = points[index::count]
    finished = _finished(workdir, mine)
    print(f"sweep: {len(points)} points, shard {index}/{count} has {len(mine)}, {len(finished)} finished, "
          f"{len(mine) - len(finished)} to run ({mode} populations)", flush=True)
    datasets, busy = {}, []
    for group in populations(mine):
        pending = [p for p in group if p["name"] not in finished]
        if not pending:
            continue
        data_key = json.dumps(group[0]["config"].data.to_dict(), sort_keys=True)
        if data_key not in datasets:  # one data load per distinct data config
            datasets[data_key] = load_data(group[0]["config"])
        busy += _train_group(group, pending, workdir, mode, datasets[data_key], progress)
    if busy:
        print(f"sweep: {len(busy)} point(s) skipped, in use by another process: {', '.join(busy)}", flush=True)
    return [load_point(workdir / "points" / p["name"]) for p in mine if is_finished(workdir, p["name"])]


__all__ = ["MEMBER_KEYS", "adopt_folders", "is_finished", "load_point", "load_sweep", "parse_shard",
           "point_label", "population_key", "population_plan", "populations", "product", "read_invocations",
           "record_invocation", "run_sweep"]
