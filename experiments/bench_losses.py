"""Speed of the smoothmax losses against optax's softmax cross-entropy (one JSON line per case).

Every case is timed in the same process, interleaved with its optax baseline (A, B, A, B, ...) so that
machine noise hits both alike, and reported as medians with their ratio:

    python experiments/bench_losses.py [--rounds 5] [--repeats 100] [--system-malloc]

Cases: forward and gradient of hard, lse and softmax on [8192, 1000] and [65536, 10] float32, jitted, at
each margin on its own line: m < 0 (-0.2), m = 0, m > 0 within τ·log 8 (0.2, the unmasked sums) and beyond
it (2.0, the target mask; AM-Softmax's m/τ is of this kind); an 8-temperature ``vmap`` sweep of the softmax
loss against one single call; an eager (not jitted) call of each loss on [64, 10] against optax's
eager call; and, without a target, the masked rival max and a select-free alternative against a plain row
max (why hard with m > 0 misses its targets on XLA:CPU), and the one-reduction value paths against the
library-reduction ones at 10 to 32 classes (where ``one_pass_classes`` lies).
Targets on the 2-core CPU, at every margin: softmax <= 1.10x optax, lse <= 1.15x, hard <= 0.8x forward
and <= 1.0x gradient, the 8-temperature sweep <= 8.5x one call, an eager call <= 3x optax's.

Each round is a fresh process running every case; a case reports the median over rounds of its ratio
(and the range). One process draws one placement of its buffers in memory, which held for its whole life
and moved the [8192, 1000] gradient ratios between 1.03 and 1.12 from process to process; more repeats
within a process do not average that out.

The rounds run under one glibc arena that is never trimmed (``STABLE_MALLOC``). With the allocator as it
comes, glibc hands a thread's heap back to the kernel when it empties, so that a random share of the
calls, on either side of a comparison, writes its [8192, 1000] output into fresh pages and pays ~7 ms of
page faults for 32 MB: the medians then flip between two modes. Both sides run under the same allocator;
``--system-malloc`` measures without it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

import smoothmax
from smoothmax import losses  # the paths, called directly where a case explains a choice
from smoothmax.provenance import machine

SHAPES = [(8192, 1000), (65536, 10)]
TARGETS = {("softmax", "forward"): 1.10, ("softmax", "gradient"): 1.10,
           ("lse", "forward"): 1.15, ("lse", "gradient"): 1.15,
           ("hard", "forward"): 0.80, ("hard", "gradient"): 1.00}
STABLE_MALLOC = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(2**30),
                 "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}


def _timer(fn, *args):
    def run():
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        return time.perf_counter() - start
    run()  # compile and warm up
    run()
    return run


def _interleaved(a, b, repeats):
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(a())
        times_b.append(b())
    return statistics.median(times_a), statistics.median(times_b)


def _mean_loss(loss_fn):
    return lambda z, y: jnp.mean(loss_fn(z, y))


def measure(repeats, margins):
    """One round: every case in this process, as dicts."""
    results = []
    optax_ce = optax.softmax_cross_entropy_with_integer_labels

    def losses(m):
        return {
            "hard": lambda z, y: smoothmax.hard_loss(z, y, margin=m),
            "lse": lambda z, y: smoothmax.lse_loss(z, y, temperature=0.5, margin=m),
            "softmax": lambda z, y: smoothmax.softmax_loss(z, y, temperature=0.5, margin=m),
        }

    for batch, classes in SHAPES:
        key_z, key_y = jax.random.split(jax.random.key(0))
        z = jax.random.normal(key_z, (batch, classes), jnp.float32) * 3
        y = jax.random.randint(key_y, (batch,), 0, classes)
        for m in margins:
            for name, loss in losses(m).items():
                for mode in ("forward", "gradient"):
                    if mode == "forward":
                        ours, base = jax.jit(loss), jax.jit(optax_ce)
                    else:
                        ours, base = jax.jit(jax.grad(_mean_loss(loss))), jax.jit(jax.grad(_mean_loss(optax_ce)))
                    t_ours, t_base = _interleaved(_timer(ours, z, y), _timer(base, z, y), repeats)
                    results.append({
                        "case": f"{name}_{mode}", "shape": [batch, classes], "margin": m, "ms": t_ours * 1e3,
                        "optax_ms": t_base * 1e3, "ratio": t_ours / t_base, "target": TARGETS[(name, mode)],
                    })

    # Eager calls (no jit at the call site): one dispatch of a cached executable, as optax's few ops.
    z = jax.random.normal(jax.random.key(3), (64, 10), jnp.float32) * 3
    y = jax.random.randint(jax.random.key(4), (64,), 0, 10)
    for name, loss in losses(0.2).items():
        t_ours, t_base = _interleaved(_timer(loss, z, y), _timer(optax_ce, z, y), 4 * repeats)
        results.append({
            "case": f"{name}_eager", "shape": [64, 10], "margin": 0.2, "ms": t_ours * 1e3,
            "optax_ms": t_base * 1e3, "ratio": t_ours / t_base, "target": 3.0,
        })

    # An 8-temperature sweep in one vmapped call against one single call (value and gradient).
    batch, classes = SHAPES[0]
    z = jax.random.normal(jax.random.key(1), (batch, classes), jnp.float32) * 3
    y = jax.random.randint(jax.random.key(2), (batch,), 0, classes)
    temps = jnp.geomspace(0.03, 3.0, 8)

    def value_and_grad(t, z, y):
        return jax.value_and_grad(lambda z: jnp.mean(smoothmax.softmax_loss(z, y, temperature=t)))(z)

    def optax_value_and_grad(t, z, y):
        return jax.value_and_grad(lambda z: jnp.mean(optax_ce(z / t, y)))(z)

    single = jax.jit(value_and_grad)
    sweep = jax.jit(jax.vmap(value_and_grad, in_axes=(0, None, None)))
    t_sweep, t_single = _interleaved(_timer(sweep, temps, z, y), _timer(single, temps[0], z, y), repeats)
    # For scale: the same sweep of optax's cross-entropy on z/τ. Both write an [8, B, C] gradient (256 MB
    # here); under the system allocator its first touch of fresh memory dominates on this machine.
    t_optax_sweep, _ = _interleaved(
        _timer(jax.jit(jax.vmap(optax_value_and_grad, in_axes=(0, None, None))), temps, z, y),
        _timer(jax.jit(optax_value_and_grad), temps[0], z, y), repeats,
    )
    results.append({
        "case": "softmax_sweep8_value_and_grad", "shape": [batch, classes], "ms": t_sweep * 1e3,
        "single_ms": t_single * 1e3, "ratio": t_sweep / t_single, "target": 8.5,
        "optax_sweep_ms": t_optax_sweep * 1e3,
    })
    return results + measure_reductions(repeats) + measure_one_pass(repeats)


def measure_reductions(repeats):
    """Why hard with m > 0 misses its targets: the masked rival max against a plain row max, and the
    select-free alternative we measured and did not adopt (the hinge as ``max_i(z_i + m·min(|i − y|, 1))
    − z_y``: one arithmetic pass, no mask, no ``cond``). Ratios to a plain max; no targets."""
    results = []
    for batch, classes in SHAPES:
        key_z, key_y = jax.random.split(jax.random.key(5))
        z = jax.random.normal(key_z, (batch, classes), jnp.float32) * 3
        y = jax.random.randint(key_y, (batch,), 0, classes)
        columns = jnp.arange(classes, dtype=jnp.float32)

        def arithmetic_hinge(z, y, m=0.2):
            apart = jnp.minimum(jnp.abs(columns - y[:, None].astype(jnp.float32)), 1.0)
            return jnp.max(z + m * apart, axis=-1) - jnp.take_along_axis(z, y[:, None], -1)[:, 0]

        plain = _timer(jax.jit(lambda z, y: jnp.max(z, axis=-1)), z, y)
        for name, fn in (("rival_max_select", losses._rival_max), ("hinge_arithmetic_mask", arithmetic_hinge)):
            t_case, t_plain = _interleaved(_timer(jax.jit(fn), z, y), plain, repeats)
            results.append({"case": name, "shape": [batch, classes], "ms": t_case * 1e3,
                            "plain_max_ms": t_plain * 1e3, "ratio": t_case / t_plain, "target": None})
    return results


def measure_one_pass(repeats):
    """Where ``one_pass_classes`` lies: each value path called directly (no ``cond``) at m = 0, the
    one-reduction paths against the library-reduction ones, around the threshold. Ratios; no targets."""
    results = []
    pairs = {"softmax": (losses._tied_one_pass, losses._tied_lse), "lse": (losses._one_pass, losses._unmasked)}
    for batch, classes in ((65536, 10), (32768, 20), (26624, 24), (20480, 32)):
        key_z, key_y = jax.random.split(jax.random.key(6))
        z = jax.random.normal(key_z, (batch, classes), jnp.float32) * 3
        y = jax.random.randint(key_y, (batch,), 0, classes)
        for name, (one_pass, library) in pairs.items():
            tau_r = 0.5 if name == "softmax" else 0.0

            def value(path):
                return jax.jit(lambda z, y: path(z, y, jnp.full(y.shape, 0.5), jnp.full(y.shape, tau_r),
                                                 jnp.zeros(y.shape)).loss)

            t_one, t_library = _interleaved(_timer(value(one_pass), z, y), _timer(value(library), z, y), repeats)
            results.append({"case": f"{name}_one_pass_vs_library", "shape": [batch, classes], "ms": t_one * 1e3,
                            "library_ms": t_library * 1e3, "ratio": t_one / t_library, "target": None})
    return results


def summarise(rounds):
    """Per case: medians over rounds of every timing and of the ratio, and the ratio's range."""
    for per_round in zip(*rounds):
        first = per_round[0]
        ratios = [r["ratio"] for r in per_round]
        ratio = statistics.median(ratios)
        line = {"case": first["case"], "shape": first["shape"]}
        if "margin" in first:
            line["margin"] = first["margin"]
        for key in ("ms", "optax_ms", "single_ms", "optax_sweep_ms", "plain_max_ms", "library_ms"):
            if key in first:
                line[key] = round(statistics.median(r[key] for r in per_round), 3)
        line.update(ratio=round(ratio, 3), ratio_range=[round(min(ratios), 3), round(max(ratios), 3)],
                    rounds=len(ratios), target=first["target"],
                    ok=None if first["target"] is None else ratio <= first["target"])
        yield line


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes, each running every case")
    parser.add_argument("--repeats", type=int, default=100, help="interleaved calls per case and round")
    parser.add_argument("--system-malloc", action="store_true",
                        help="keep the allocator as it comes (timings of [8192, 1000] outputs turn bimodal)")
    parser.add_argument("--margins", type=float, nargs="+", default=[-0.2, 0.0, 0.2, 2.0],
                        help="margins of the jitted cases, each on its own lines (tau = 0.5)")
    parser.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_round:
        for result in measure(args.repeats, args.margins):
            print(json.dumps(result), flush=True)
        return
    # glibc reads its settings when a process starts, so they go to the rounds' processes.
    env = os.environ if args.system_malloc else {**os.environ, **STABLE_MALLOC}
    rounds = []
    for index in range(args.rounds):
        command = [sys.executable, __file__, "--one-round", "--repeats", str(args.repeats),
                   "--margins", *map(str, args.margins)]
        out = subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout
        rounds.append([json.loads(line) for line in out.splitlines() if line.startswith("{")])
        print(f"round {index + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    malloc = "system" if args.system_malloc else "stable"
    where = machine()  # after the rounds: alone on the machine, as they were
    for line in summarise(rounds):
        print(json.dumps({**line, "malloc": malloc, "machine": where}), flush=True)


if __name__ == "__main__":
    main()
