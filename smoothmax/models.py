"""Flax NNX classifiers for CIFAR-10: an airbench-style CNN, a ResNet-18-style network, two heads.

Heads:
* ``linear``: ``z = W·x + b``. The network can scale its logits freely, and so undo a temperature.
* ``cosine`` (NormFace): ``z_i = cos(x, w_i) ∈ [−1, 1]``. The logit range is fixed, so the loss
  temperature really sets the smoothness (τ plays the role of 1/s in NormFace/AM-Softmax).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


class LinearHead(nnx.Module):
    """``z = scale·(W·x + b)``: a scale below 1 slows the head against the body at one learning rate
    (airbench's 1/9)."""

    def __init__(self, features: int, num_classes: int, *, rngs: nnx.Rngs, scale: float = 1.0):
        self.dense = nnx.Linear(features, num_classes, rngs=rngs)
        self.scale = scale

    def __call__(self, x):
        return self.scale * self.dense(x)  # exact at 1


class CosineHead(nnx.Module):
    """Cosine similarity between the feature and each class weight: logits in [−1, 1]."""

    def __init__(self, features: int, num_classes: int, *, rngs: nnx.Rngs):
        init = nnx.initializers.normal(1.0)
        self.weight = nnx.Param(init(rngs.params(), (features, num_classes)))

    def __call__(self, x):
        x = x.astype(jnp.float32)
        w = self.weight[...].astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.sum(x * x, -1, keepdims=True) + 1e-12)
        w = w * jax.lax.rsqrt(jnp.sum(w * w, 0, keepdims=True) + 1e-12)
        return x @ w


HEADS = {"linear": LinearHead, "cosine": CosineHead}


def make_head(name: str, features: int, num_classes: int, rngs: nnx.Rngs, scale: float = 1.0):
    if name not in HEADS:
        raise ValueError(f"unknown head {name!r}: choose one of {', '.join(sorted(HEADS))}")
    if name == "linear":
        return LinearHead(features, num_classes, rngs=rngs, scale=scale)
    if scale != 1.0:
        raise ValueError(f"a {name} head's logits are cosines: model.head_scale must be 1 (set τ instead)")
    return HEADS[name](features, num_classes, rngs=rngs)


def _conv(cin, cout, rngs, dtype, stride=1, kernel=3):
    return nnx.Conv(cin, cout, (kernel, kernel), strides=stride, padding="SAME", use_bias=False,
                    dtype=dtype, rngs=rngs)


def _bn(features, rngs, momentum, dtype, scale=True):
    return nnx.BatchNorm(features, momentum=momentum, epsilon=1e-5, use_scale=scale, dtype=dtype, rngs=rngs)


def max_pool_2x2(x):
    """2×2 max-pooling with stride 2 of an NHWC batch (even height and width), as a reshape and a max.

    The same values and gradients as ``nnx.max_pool(x, (2, 2), strides=(2, 2))`` (away from exact ties,
    where the max's gradient is shared), but differentiated as a reduction: jax differentiates a
    ``reduce_window`` max by carrying one int32 index array per dimension through a variadic
    ``reduce_window`` and scattering back, which XLA:CPU runs several times slower.
    """
    b, h, w, c = x.shape
    return jnp.max(x.reshape(b, h // 2, 2, w // 2, 2, c), axis=(2, 4))


WHITENED_STEM_MAX = 24  # ± each of the 12 principal components of a 2×2 RGB patch


class WhitenedStem(nnx.Module):
    """A frozen 2×2 convolution onto the leading principal components of 2×2 patches, each component and its
    negative, scaled to unit variance (airbench's patch-whitening first layer).

    The first layer then starts where a learned one ends up after some training (edge and colour
    detectors, decorrelated), and never moves: its kernel is a buffer (``nnx.Variable``), not a parameter,
    so the optimizer and weight decay never see it. The ± pairs keep the sign of each component through the
    activation. :meth:`fit` sets the kernel from training images.
    """

    def __init__(self, width: int, dtype):
        if width % 2 or not 0 < width <= WHITENED_STEM_MAX:
            raise ValueError(f"a whitened stem has an even width of at most {WHITENED_STEM_MAX}, not {width}")
        self.dtype = dtype
        self.kernel = nnx.Variable(jnp.zeros((2, 2, 3, width), jnp.float32))

    def fit(self, images: np.ndarray, eps: float = 5e-4) -> None:
        """Set the kernel from normalised NHWC images: the covariance of their 2×2 patches, in float64."""
        x = np.asarray(images, np.float64)
        patches = np.concatenate([x[:, i:i + x.shape[1] - 1, j:j + x.shape[2] - 1] for i in (0, 1) for j in (0, 1)],
                                 axis=-1).reshape(-1, 12)  # (i, j, channel) order, as the kernel's HWI axes
        values, vectors = np.linalg.eigh(np.cov(patches, rowvar=False))
        keep = self.kernel.shape[-1] // 2
        top = vectors[:, ::-1][:, :keep] / np.sqrt(values[::-1][:keep] + eps)
        self.kernel[...] = jnp.asarray(np.concatenate([top, -top], axis=1).reshape(2, 2, 3, -1), jnp.float32)

    def __call__(self, x):
        w = self.kernel[...].astype(self.dtype)
        return jax.lax.conv_general_dilated(x.astype(self.dtype), w, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))


def identity_kernel(kernel):
    """A 3×3 HWIO kernel whose first ``I`` output channels copy the input channels (airbench's Dirac
    initialisation): each block starts close to passing its input on, the rest of its filters random."""
    cin = min(kernel.shape[2], kernel.shape[3])
    eye = jnp.zeros(kernel.shape[:3] + (cin,), kernel.dtype).at[1, 1, jnp.arange(cin), jnp.arange(cin)].set(1)
    return kernel.at[..., :cin].set(eye)


class ConvBlock(nnx.Module):
    """conv → max-pool 2×2 → BN → GELU → conv → BN → GELU (airbench's block)."""

    def __init__(self, cin, cout, *, rngs, bn_momentum, dtype, bn_scale=True):
        self.conv1 = _conv(cin, cout, rngs, dtype)
        self.bn1 = _bn(cout, rngs, bn_momentum, dtype, bn_scale)
        self.conv2 = _conv(cout, cout, rngs, dtype)
        self.bn2 = _bn(cout, rngs, bn_momentum, dtype, bn_scale)

    def __call__(self, x):
        x = self.conv1(x)
        x = max_pool_2x2(x)
        x = nnx.gelu(self.bn1(x))
        return nnx.gelu(self.bn2(self.conv2(x)))


class CNN(nnx.Module):
    """A fast CIFAR-10 CNN: a stem conv, three pooled blocks, global max-pool, a head."""

    def __init__(self, widths=(64, 128, 256), num_classes=10, head="linear", *, stem="conv", stem_width=None,
                 bn_momentum=0.9, bn_scale=True, head_scale=1.0, identity_init=False, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        width = stem_width or widths[0] // 2
        self.stem = WhitenedStem(width, dtype) if stem == "whitened" else _conv(3, width, rngs, dtype)
        stem = width
        self.stem_bn = _bn(stem, rngs, bn_momentum, dtype, bn_scale)
        chans = (stem,) + tuple(widths)
        self.blocks = nnx.List(
            [ConvBlock(chans[i], chans[i + 1], rngs=rngs, bn_momentum=bn_momentum, dtype=dtype,
                       bn_scale=bn_scale) for i in range(len(widths))]
        )
        self.head = make_head(head, widths[-1], num_classes, rngs, head_scale)
        if identity_init:
            for block in self.blocks:
                for conv in (block.conv1, block.conv2):
                    conv.kernel[...] = identity_kernel(conv.kernel[...])

    def __call__(self, x):
        x = nnx.gelu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.max(x, axis=(1, 2)).astype(jnp.float32))


class BasicBlock(nnx.Module):
    def __init__(self, cin, cout, stride, *, rngs, bn_momentum, dtype, bn_scale=True):
        self.conv1 = _conv(cin, cout, rngs, dtype, stride)
        self.bn1 = _bn(cout, rngs, bn_momentum, dtype, bn_scale)
        self.conv2 = _conv(cout, cout, rngs, dtype)
        self.bn2 = _bn(cout, rngs, bn_momentum, dtype, bn_scale)
        self.project = stride != 1 or cin != cout  # a 1x1 conv on the skip path when shapes change
        if self.project:
            self.shortcut = _conv(cin, cout, rngs, dtype, stride, kernel=1)
            self.shortcut_bn = _bn(cout, rngs, bn_momentum, dtype, bn_scale)

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        skip = self.shortcut_bn(self.shortcut(x)) if self.project else x
        return nnx.relu(y + skip)


class ResNet(nnx.Module):
    """ResNet-18 for 32×32 inputs: 3×3 stem, four stages of two basic blocks, average pool, a head."""

    def __init__(self, widths=(64, 128, 256, 512), blocks_per_stage=2, num_classes=10, head="linear", *,
                 bn_momentum=0.9, bn_scale=True, head_scale=1.0, dtype=jnp.float32, rngs: nnx.Rngs):
        self.stem = _conv(3, widths[0], rngs, dtype)
        self.stem_bn = _bn(widths[0], rngs, bn_momentum, dtype, bn_scale)
        blocks, cin = [], widths[0]
        for stage, width in enumerate(widths):
            for i in range(blocks_per_stage):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, width, stride, rngs=rngs, bn_momentum=bn_momentum, dtype=dtype,
                                         bn_scale=bn_scale))
                cin = width
        self.blocks = nnx.List(blocks)
        self.head = make_head(head, widths[-1], num_classes, rngs, head_scale)

    def __call__(self, x):
        x = nnx.relu(self.stem_bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(jnp.mean(x, axis=(1, 2)).astype(jnp.float32))


def make_model(config, num_classes: int, seed: int):
    """The network that ``config`` (``model.name``, ``widths``, ``head``, ...) describes."""
    rngs = nnx.Rngs(params=seed)
    dtype = jnp.bfloat16 if config.get("compute_dtype", "float32") == "bfloat16" else jnp.float32
    common = dict(num_classes=num_classes, head=config.head, bn_momentum=config.bn_momentum,
                  bn_scale=config.get("bn_scale", True), head_scale=config.get("head_scale", 1.0), dtype=dtype,
                  rngs=rngs)
    if config.name == "cnn":
        return CNN(tuple(config.widths), stem=config.get("stem", "conv"), stem_width=config.get("stem_width") or None,
                   identity_init=config.get("identity_init", False), **common)
    if config.name == "resnet18":
        return ResNet(tuple(config.widths), **common)
    raise ValueError(f"unknown model {config.name!r}: choose cnn or resnet18")
