"""Command line: ``smoothmax train --config configs/cifar10_cpu.py:softmax --workdir runs/x [--config.k=v]``."""

from __future__ import annotations

import argparse
import json
import sys

from smoothmax.config import ConfigError, load_config


def _split_overrides(argv):
    """Pull ``--config.key=value`` (or ``--config.key value``) out of argv; argparse gets the rest."""
    rest, overrides, i = [], [], 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith("--config."):
            item = arg[len("--config."):]
            if "=" not in item:
                if i + 1 >= len(argv):
                    raise ConfigError(f"override {arg} has no value")
                item, i = f"{item}={argv[i + 1]}", i + 1
            overrides.append(item)
        else:
            rest.append(arg)
        i += 1
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
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train one config into a workdir")
    train.add_argument("--config", required=True, help="path/to/config.py[:variant]")
    train.add_argument("--workdir", required=True)
    train.add_argument("--resume", action="store_true", default=True,
                       help="continue from the workdir's last checkpoint (the default)")
    train.add_argument("--restart", dest="resume", action="store_false", help="ignore existing checkpoints")
    train.add_argument("--no-progress", dest="progress", action="store_false")
    train.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() first (one process per host)")
    args = parser.parse_args(argv)

    try:
        config = load_config(args.config, overrides)
    except ConfigError as err:
        print(f"smoothmax: error: {err}", file=sys.stderr)
        return 2
    if args.command == "train":
        from smoothmax.train import train_and_evaluate

        _init_distributed(args.distributed)
        summary = train_and_evaluate(config, args.workdir, resume=args.resume, progress=args.progress)
        keys = ("objective", "temperature", "margin", "head", "test_accuracy", "test_ce", "wall_seconds")
        print(json.dumps({k: summary[k] for k in keys}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
