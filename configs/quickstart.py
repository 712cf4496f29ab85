"""Quick start: hard, lse and softmax over a few temperatures on the built-in synthetic set (minutes on a CPU).

    smoothmax sweep --config configs/quickstart.py --workdir runs/quickstart
"""

from smoothmax.config import base_config
from smoothmax.sweep import product

TEMPERATURES = (0.1, 0.3, 1.0)


def get_config(arg: str = ""):
    c = base_config()
    c.epochs = 3
    c.eval_every_epochs = 1
    c.data.name = "synthetic"
    c.data.num_train = 4_000
    c.data.num_test = 2_000
    c.data.difficulty = 0.5
    c.data.batch_size = 128
    c.model.widths = (16, 32, 64)
    c.optimizer.learning_rate = 0.1
    c.checkpoint.every_epochs = 3
    return c


def get_sweep(arg: str = ""):
    return (
        product({"loss.name": ["hard"], "loss.temperature": [0.0], "loss.margin": [0.0, 1.0]})
        + product({"loss.name": ["lse", "softmax"], "loss.temperature": list(TEMPERATURES), "loss.margin": [0.0]})
    )
