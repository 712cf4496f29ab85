"""Command line.

    smoothmax train  --config configs/cifar10_cpu.py:softmax --workdir runs/x [--config.key=value ...]
    smoothmax sweep  --config configs/sweep_temperature.py --workdir runs/sweep [--shard i/n] [--population auto]
    smoothmax report runs/sweep
"""

from __future__ import annotations

import argparse
import json
import sys

import smoothmax
from smoothmax.config import ConfigError, load_config, validate_config


def _split_overrides(argv):
    """Pull ``--config.key=value`` out of argv; argparse gets the rest.

    Only the ``=`` form: in ``--config.key value`` a value cannot be told from the next flag
    (``--config.data.augment --no-progress``).
    """
    rest, overrides = [], []
    for arg in argv:
        if arg.startswith("--config."):
            if "=" not in arg:
                raise ConfigError(f"override {arg} has no value: write {arg}=VALUE")
            overrides.append(arg[len("--config."):])
        else:
            rest.append(arg)
    return rest, overrides


def _init_distributed(enabled: bool) -> None:
    if enabled:
        import jax

        jax.distributed.initialize()  # reads the cluster from SLURM / TPU / env variables


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        argv, overrides = _split_overrides(argv)
    except ConfigError as err:
        print(f"smoothmax: error: {err}", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog="smoothmax", description="Train and compare smooth-max objectives.")
    parser.add_argument("--version", action="version", version=f"smoothmax {smoothmax.__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one config into a workdir")
    train.add_argument("--config", required=True, help="path/to/config.py[:variant]")
    train.add_argument("--workdir", required=True)
    train.add_argument("--restart", action="store_true",
                       help="discard the workdir's old run (checkpoints, metrics, summary) and start afresh; "
                            "without it a workdir resumes its own experiment and refuses another config")
    train.add_argument("--no-progress", dest="progress", action="store_false")
    train.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() first (one process per host)")
    sweep = sub.add_parser("sweep", help="run (or resume) a sweep's grid, then write its report")
    sweep.add_argument("--config", required=True, help="path/to/sweep_config.py[:variant]")
    sweep.add_argument("--workdir", required=True)
    sweep.add_argument("--shard", default="0/1", help="i/n: run every n-th point starting at i")
    sweep.add_argument("--population", default="auto", choices=("auto", "vmap", "sequential"),
                       help="how members that differ only in τ, m or seed train: vmapped in one step, "
                            "or one after another through one compiled step (auto: vmap on GPU/TPU)")
    sweep.add_argument("--no-progress", dest="progress", action="store_false")
    sweep.add_argument("--no-report", dest="report", action="store_false",
                       help="only train: no table and no report.md (a study that writes its own report)")
    sweep.add_argument("--distributed", action="store_true")
    report = sub.add_parser("report", help="write report.md and figures for a sweep workdir")
    report.add_argument("workdir")
    args = parser.parse_args(argv)

    try:
        if args.command == "train":
            from smoothmax.train import train_and_evaluate

            config = load_config(args.config, overrides)
            if args.distributed:  # the trainer validates too, but only after jax.distributed has started
                validate_config(config, devices=1)
            _init_distributed(args.distributed)
            summary = train_and_evaluate(config, args.workdir, restart=args.restart, progress=args.progress)
            keys = ("objective", "temperature", "margin", "head", "test_accuracy", "test_ce", "wall_seconds")
            print(json.dumps({k: summary[k] for k in keys}))
        elif args.command == "sweep":
            from smoothmax.report import markdown_table, summary_table, write_report
            from smoothmax.sweep import parse_shard, run_sweep

            shard = parse_shard(args.shard)
            _init_distributed(args.distributed)
            summaries = run_sweep(args.config, args.workdir, shard=shard, mode=args.population,
                                  overrides=overrides, progress=args.progress)
            if args.report and summaries:  # none finished: every point was busy in another process
                print(markdown_table(summary_table(summaries)))
                if shard[1] == 1:
                    print(f"report: {write_report(args.workdir)}")
        elif args.command == "report":
            from smoothmax.report import write_report

            print(f"report: {write_report(args.workdir)}")
    except (ConfigError, FileNotFoundError) as err:
        print(f"smoothmax: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
