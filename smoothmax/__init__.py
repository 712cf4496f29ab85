"""smoothmax: the smooth-max family of classification losses, and a harness to compare them."""

from smoothmax.losses import (
    OBJECTIVES,
    family_loss,
    hard_loss,
    lse_loss,
    objective,
    smooth_max,
    smooth_relu,
    softmax_loss,
)
from smoothmax.margins import implicit_margin, implicit_margin_bound, logit_margin

__version__ = "0.1.0"

__all__ = [
    "OBJECTIVES",
    "family_loss",
    "hard_loss",
    "implicit_margin",
    "implicit_margin_bound",
    "logit_margin",
    "lse_loss",
    "objective",
    "smooth_max",
    "smooth_relu",
    "softmax_loss",
]
