"""The objectives study at CPU scale: hard (m = 0, 1), lse and softmax over τ, with linear and cosine heads.

Runs the earlier CPU recipe's optimiser (batch 128, SGD-Nesterov at 0.1, warm-up and linear decay) on a
narrower network (widths 16/32/64) for 2 epochs, so that the whole grid (24 points) fits in about 40 minutes of a 2-core CPU. The data
is the official archive (downloaded once, md5-checked, cached) unless ``$SMOOTHMAX_CIFAR10`` or
``--config.data.path`` names a local copy; the README's study ran on the JPEG copy in ../shared:

    export SMOOTHMAX_CIFAR10=../shared/data/cifar10-jpeg.tgz
    smoothmax sweep --config configs/sweep_temperature.py --workdir runs/sweep
    smoothmax report runs/sweep

Variant ``:full`` runs each point at the CPU recipe's widths (32/64/128) for 8 epochs, with a 16-channel stem
and no flip TTA (estimated, not measured: about 6 h on this CPU). For error bars add seeds to SEEDS (``SEEDS = (0, 1, 2)``) and rerun into the same workdir: the
finished seed-0 points are kept and the report pools the seeds. The grid sets ``seed``, so ``--config.seed``
is an error here.
"""

from smoothmax.config import base_config
from smoothmax.sweep import product

TEMPERATURES = (0.03, 0.1, 0.3, 1.0, 3.0)
HEADS = ("linear", "cosine")
SEEDS = (0,)


def get_config(arg: str = ""):
    c = base_config()
    c.data.name = "cifar10"
    c.data.path = ""  # $SMOOTHMAX_CIFAR10, else the official archive
    c.data.download = True
    c.data.batch_size = 128
    c.model.name = "cnn"
    c.optimizer.learning_rate = 0.1
    c.optimizer.decay = "linear"
    c.checkpoint.every_epochs = 1
    if arg == "full":
        c.epochs = 8
        c.model.widths = (32, 64, 128)
        c.eval_every_epochs = 2
    else:
        c.epochs = 2
        c.model.widths = (16, 32, 64)
    return c


def get_sweep(arg: str = ""):
    points = product({"loss.name": ["hard"], "loss.temperature": [0.0], "loss.margin": [0.0, 1.0],
                      "model.head": list(HEADS), "seed": list(SEEDS)})
    points += product({"loss.name": ["lse", "softmax"], "loss.temperature": list(TEMPERATURES),
                       "loss.margin": [0.0], "model.head": list(HEADS), "seed": list(SEEDS)})
    return points
