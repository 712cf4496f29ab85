"""CPU recipe: the airbench-style CNN (widths 32/64/128) on CIFAR-10, on 2 cores.

8 epochs of batch 128, SGD-Nesterov with linear warm-up and decay,
crop+flip augmentation, and flip test-time augmentation; evaluated once, at the end, to save time.

    smoothmax train --config configs/cifar10_cpu.py:softmax --workdir runs/cpu-softmax

The data is the official archive (downloaded once, md5-checked, cached) unless ``$SMOOTHMAX_CIFAR10`` or
``--config.data.path`` names a local copy. Variants: hard, hard-m1, lse, softmax. Measured results are in the
README, on the JPEG copy of CIFAR-10 (``export SMOOTHMAX_CIFAR10=../shared/data/cifar10-jpeg.tgz``), so a
little below published CIFAR-10 numbers.
"""

from smoothmax.config import base_config, objective_variant


def get_config(arg: str = "softmax"):
    c = base_config()
    c.epochs = 8
    c.data.name = "cifar10"
    c.data.path = ""  # $SMOOTHMAX_CIFAR10, else the official archive
    c.data.download = True
    c.data.batch_size = 128
    c.data.eval_flip = True
    c.model.name = "cnn"
    c.model.widths = (32, 64, 128)
    c.model.stem_width = 12  # a narrow full-resolution stem (the README's CPU recipe section has its timings)
    c.optimizer.learning_rate = 0.1
    c.optimizer.weight_decay = 5e-4
    c.optimizer.warmup_fraction = 0.15
    c.optimizer.decay = "linear"
    c.eval_every_epochs = 8
    c.checkpoint.every_epochs = 2
    return objective_variant(c, arg)
