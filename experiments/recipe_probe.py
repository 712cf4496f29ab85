"""Choose the CPU recipe's settings on the validation split: train a variant, then score its final weights
under each test-time augmentation, one JSON line per probe in ``experiments/results/recipe/probes.jsonl``.

    python experiments/recipe_probe.py --name whitened --epochs 5 --config.model.stem=whitened
    python experiments/recipe_probe.py --report [--pair combo6 base6]   # the table of every probe so far

Every probe holds out ``data.validation = 5000`` training images and trains on the other 45,000. Only
validation accuracy is recorded: the test set is for reporting the chosen recipe (``bench_recipe.py``).
One augmentation-free training run serves every test-time augmentation (they change evaluation only).
Timings here are the trainer's own, for comparing probes run alone on one machine.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED_COPY = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tgz"
RESULTS = ROOT / "experiments" / "results" / "recipe" / "probes.jsonl"
# (eval_flip, eval_translate) pairs scored for every probe.
VIEWS = ((False, 0), (True, 0), (True, 1), (True, 2))


def report(pair: list[str] | None) -> str:
    """Markdown: each probe's validation accuracy per view set (mean ± 95 % t-interval over its seeds, n), and
    with ``pair = [a, b]`` the per-seed paired differences a − b."""
    from scipy import stats

    rows = [json.loads(line) for line in RESULTS.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "val_accuracy_by_views" in r]
    views = list(rows[0]["val_accuracy_by_views"])

    def cell(values):
        values = [100 * v for v in values]
        mean = sum(values) / len(values)
        if len(values) < 2:
            return f"{mean:.2f} % (n = 1)"
        half = stats.t.ppf(0.975, len(values) - 1) * stats.sem(values)
        return f"{mean:.2f} ± {half:.2f} % (n = {len(values)})"

    names = list(dict.fromkeys(r["probe"] for r in rows))
    lines = ["| probe | epochs | " + " | ".join(views) + " | training s (mean) |",
             "|---" * (len(views) + 3) + "|"]
    for name in names:
        runs = [r for r in rows if r["probe"] == name]
        accuracy = [cell([r["val_accuracy_by_views"][v]["val_accuracy"] for r in runs]) for v in views]
        seconds = sum(r["training_seconds"] for r in runs) / len(runs)
        lines.append(f"| {name} | {runs[0]['epochs']} | " + " | ".join(accuracy) + f" | {seconds:.0f} |")
    if pair:
        by_seed = [{r["seed"]: r for r in rows if r["probe"] == name} for name in pair]
        seeds = sorted(set(by_seed[0]) & set(by_seed[1]))
        if not seeds:
            return "\n".join(lines + ["", f"No seed has both {pair[0]} and {pair[1]} yet."])
        lines += ["", f"Paired differences {pair[0]} − {pair[1]}, seeds {seeds}:", "",
                  "| views | difference |", "|---|---|"]
        for v in views:
            diffs = [by_seed[0][s]["val_accuracy_by_views"][v]["val_accuracy"]
                     - by_seed[1][s]["val_accuracy_by_views"][v]["val_accuracy"] for s in seeds]
            lines.append(f"| {v} | {cell(diffs).replace(' %', ' points')} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--report", action="store_true", help="print the table of every probe and stop")
    parser.add_argument("--pair", nargs=2, metavar=("A", "B"), help="with --report: paired differences A − B")
    parser.add_argument("--name")
    parser.add_argument("--variant", default="softmax")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default="/tmp/recipe-probes")
    args, overrides = parser.parse_known_args()
    if args.report:
        print(report(args.pair))
        return
    if not args.name:
        parser.error("--name is required to run a probe")
    if "SMOOTHMAX_CIFAR10" not in os.environ and SHARED_COPY.exists():
        os.environ["SMOOTHMAX_CIFAR10"] = str(SHARED_COPY)

    import jax

    from smoothmax import train
    from smoothmax.config import load_config
    from smoothmax.provenance import provenance

    settings = [f"--config.epochs={args.epochs}", "--config.data.validation=5000", f"--config.seed={args.seed}",
                f"--config.data.seed={args.seed}", *overrides]
    cfg = load_config(f"configs/cifar10_cpu.py:{args.variant}", [o.removeprefix("--config.") for o in settings])
    workdir = Path(args.workdir) / f"{args.name}-s{args.seed}"
    start = time.time()
    summary = train.train_and_evaluate(cfg, workdir, dataset=None, progress=False)
    wall = time.time() - start

    # Rescore the final weights under each test-time augmentation, on validation only.
    cfg = train._prepare(cfg)
    ds, (val_images, val_labels) = train.split_data(train.load_data(cfg), cfg.data)
    with cfg.unlocked():
        cfg.total_steps = summary["config"]["total_steps"]
    scores = {}
    for flip, shift in VIEWS:
        view_cfg = cfg.copy_and_resolve_references()
        view_cfg.data.eval_flip, view_cfg.data.eval_translate = flip, shift
        program = train.get_program(view_cfg, ds)
        fresh = train.create_train_state(view_cfg, program.spec, ds.num_classes, ds.train_images)
        manager = train.checkpoint_manager(workdir / "checkpoints", view_cfg)
        state, _ = train.restore_or_init(manager, jax.device_put(fresh, program.state_sharding))
        manager.close()
        tic = time.time()
        (metrics, _), = train.evaluate(program, state, val_images, val_labels, view_cfg, summary["final_temperature"],
                                       summary["final_margin"])
        scores[f"flip={int(flip)},translate={shift}"] = {"val_accuracy": metrics["accuracy"],
                                                          "seconds_per_5000": round(time.time() - tic, 2)}
        print(json.dumps({"views": [flip, shift], "val_accuracy": metrics["accuracy"]}), flush=True)
    line = {"probe": args.name, "variant": args.variant, "epochs": args.epochs, "seed": args.seed,
            "overrides": overrides, "validation": 5000, "val_accuracy_by_views": scores,
            "run_wall_seconds": round(wall, 1), "training_seconds": summary["phases"]["training_seconds"],
            "images_per_second": summary["images_per_second"], "git_commit": provenance()["git_commit"],
            "date": time.strftime("%Y-%m-%d")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    with RESULTS.open("a") as f:
        f.write(json.dumps(line) + "\n")
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
