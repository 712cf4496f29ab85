"""Where a result came from: the code's commit, the library versions, the machine and the XLA flags."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path

PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy", "orbax-checkpoint", "ml_collections")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


# The instruction sets that decide XLA:CPU's speed (docs/benchmarks.md, Machines: EPYC kinds differ 3× on convs).
CPU_FLAGS = ("avx512f", "avx512_bf16", "avx2", "fma")


@functools.lru_cache(maxsize=1)
def cpu() -> dict:
    """The CPU's model name, core count and which of :data:`CPU_FLAGS` it has (from /proc/cpuinfo on Linux)."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    return {"model": model, "cores": os.cpu_count(), "flags": [f for f in CPU_FLAGS if f in flags]}


@functools.lru_cache(maxsize=1)
def sgemm_gflops(n: int = 2048, repeats: int = 10) -> float:
    """GFLOP/s of a jitted n×n float32 matmul on the default device, best of ``repeats``: the yardstick that
    makes times from different machines comparable (every benchmark line records it)."""
    import jax
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    matmul(a, a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return round(2 * n**3 / best / 1e9, 1)


def machine() -> dict:
    """What a benchmark line records of its machine: the CPU (:func:`cpu`), the device and sgemm GFLOP/s."""
    import jax

    return {"cpu": cpu(), "device_kind": jax.devices()[0].device_kind, "sgemm_gflops": sgemm_gflops()}


@functools.lru_cache(maxsize=1)
def _static() -> dict:
    commit = _git("rev-parse", "HEAD")
    status = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    return {
        "git_commit": commit,  # None when smoothmax does not run from a git checkout
        "git_clean": None if status is None else status == "",
        "versions": {p: _version(p) for p in PACKAGES},
        "python": platform.python_version(),
        "host": platform.node(),
        "cpu": cpu(),
    }


def provenance() -> dict:
    """The commit (and whether the tree was clean), versions, backend, device kind and XLA flags."""
    import jax

    devices = jax.devices()
    return {
        **_static(),
        "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "processes": jax.process_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
    }
