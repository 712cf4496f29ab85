"""Sweeps: a grid of runs declared in a config file, resumable, splittable into shards, trained as populations.

A sweep config file defines ``get_config(arg)`` (the base run) and ``get_sweep(arg)`` (a list of override
dicts, one per point; :func:`product` builds grids). ``smoothmax sweep`` writes

    workdir/sweep.json                  the points, their names and overrides
    workdir/points/<name>/              each point: config.json, metrics.jsonl, summary.json
    workdir/populations/<id>/           checkpoints of a population trained as one program

A point is finished when its ``summary.json`` exists: a rerun skips it, and resumes unfinished points from
their checkpoints. ``--shard i/n`` takes every n-th point (i = 0 … n−1), so machines that share one workdir
never run the same point.

Points that differ only in temperature, margin or seed form a population: one data stream and one compiled
program train them all. How depends on the backend (``mode="auto"``): on GPU/TPU the train step is
``vmap``ped over the members' stacked states (a small model leaves an accelerator idle, so K members cost
little more than one); on CPU, where a ``vmap`` over conv nets runs ~3x slower than the same members one after
another (batched kernels become grouped convolutions), members run one after another through the same
compiled step. Either way the sweep pays one process start, one data load and one compilation.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
from collections import defaultdict
from pathlib import Path

import jax

from smoothmax.config import ConfigError, apply_override, load_config
from smoothmax.files import atomic_write_text
from smoothmax.train import MEMBER_KEYS, load_data, static_key, train_and_evaluate, train_members

SHORT_NAMES = {"loss.name": "", "loss.temperature": "t", "loss.margin": "m", "model.head": "", "seed": "s"}


def product(axes: dict) -> list[dict]:
    """Every combination of ``{"loss.temperature": [...], "model.head": [...], ...}`` as override dicts."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def point_name(overrides: dict) -> str:
    """A readable folder name: ``lse_t0.1_m0_linear_s0`` (known keys shortened, others as key=value)."""
    parts = []
    for key, value in overrides.items():
        short = SHORT_NAMES.get(key, key.split(".")[-1] + "=")
        text = f"{value:g}" if isinstance(value, float) else str(value)
        parts.append(f"{short}{text}")
    name = "_".join(parts) or "base"
    return "".join(ch if ch.isalnum() or ch in "._=-" else "-" for ch in name)


def load_sweep(spec: str, overrides=()) -> list[dict]:
    """The points of a sweep config: ``[{"name", "overrides", "config"}, ...]`` in declaration order."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("smoothmax_sweep_config", path)
    if module_spec is None or not Path(path).is_file():
        raise ConfigError(f"sweep config file {path} does not exist")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    if not hasattr(module, "get_sweep"):
        raise ConfigError(f"{path} defines no get_sweep(arg): it is not a sweep config")
    grid = module.get_sweep(arg) if arg else module.get_sweep()
    points, seen = [], set()
    for point_overrides in grid:
        config = load_config(spec, overrides)
        for key, value in point_overrides.items():
            apply_override(config, f"{key}={value!r}")
        name = point_name(point_overrides)
        if name in seen:
            raise ConfigError(f"sweep point {name} appears twice in {path}")
        seen.add(name)
        points.append({"name": name, "overrides": point_overrides, "config": config})
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


def resolve_mode(mode: str) -> str:
    if mode == "auto":
        return "sequential" if jax.default_backend() == "cpu" else "vmap"
    if mode not in ("vmap", "sequential"):
        raise ConfigError(f"unknown population mode {mode!r}: choose auto, vmap or sequential")
    return mode


def run_sweep(spec: str, workdir, *, shard: tuple[int, int] = (0, 1), mode: str = "auto", overrides=(),
              progress: bool = True) -> list[dict]:
    """Run this shard's unfinished points; return the summaries of all its points."""
    workdir = Path(workdir)
    points = load_sweep(spec, overrides)
    mode = resolve_mode(mode)
    index, count = shard
    if jax.process_index() == 0:
        listing = [{"name": p["name"], "overrides": p["overrides"]} for p in points]
        atomic_write_text(workdir / "sweep.json", json.dumps({"config": spec, "overrides": list(overrides),
                                                             "population_mode": mode, "backend": jax.default_backend(),
                                                             "points": listing}, indent=2))
    mine = points[index::count]
    todo = [p for p in mine if not (workdir / "points" / p["name"] / "summary.json").exists()]
    print(f"sweep: {len(points)} points, shard {index}/{count} has {len(mine)}, {len(mine) - len(todo)} "
          f"finished, {len(todo)} to run ({mode} populations)", flush=True)
    datasets = {}
    for group in populations(todo):
        data_key = json.dumps(group[0]["config"].data.to_dict(), sort_keys=True)
        if data_key not in datasets:  # one data load per distinct data config
            datasets[data_key] = load_data(group[0]["config"])
        dataset = datasets[data_key]
        if mode == "vmap" and len(group) > 1:
            names = [p["name"] for p in group]
            group_id = hashlib.sha256("\n".join(names).encode()).hexdigest()[:16]
            train_members([p["config"] for p in group], [workdir / "points" / n for n in names],
                          workdir / "populations" / group_id / "checkpoints", vmapped=True,
                          progress=progress, dataset=dataset)
        else:
            for p in group:
                train_and_evaluate(p["config"], workdir / "points" / p["name"], progress=progress,
                                   dataset=dataset)
    return [json.loads((workdir / "points" / p["name"] / "summary.json").read_text()) for p in mine]


__all__ = ["MEMBER_KEYS", "load_sweep", "parse_shard", "point_name", "populations", "product", "run_sweep"]
