"""Models and heads: shapes, the cosine head's range, modes, and the config factory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from smoothmax.config import base_config
from smoothmax.models import CNN, CosineHead, ResNet, make_head, make_model


def test_cnn_and_resnet_shapes():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 32, 32, 3)), jnp.float32)
    cnn = CNN((8, 16, 16), num_classes=7, rngs=nnx.Rngs(0))
    assert cnn(x).shape == (2, 7) and cnn(x).dtype == jnp.float32
    resnet = ResNet((8, 8, 16, 16), num_classes=10, head="cosine", rngs=nnx.Rngs(0))
    assert resnet(x).shape == (2, 10)


def test_cosine_head_logits_are_cosines():
    head = CosineHead(5, 4, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((6, 5)) * 100, jnp.float32)
    z = np.asarray(head(x))
    w = np.asarray(head.weight[...])
    want = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(z, want, atol=1e-5)
    assert np.all(np.abs(z) <= 1 + 1e-6)
    # Scaling the feature does not change the logits: the head cannot undo a temperature.
    np.testing.assert_allclose(head(3 * x), z, atol=1e-5)


def test_batchnorm_train_and_eval_modes_differ():
    model = CNN((8, 8, 8), rngs=nnx.Rngs(0))
    x = jnp.ones((4, 32, 32, 3)) + jnp.arange(4.0)[:, None, None, None]
    model.train()
    train_out = model(x)
    model.eval()
    assert not np.allclose(train_out, model(x))


def test_make_model_from_config_and_errors():
    c = base_config().model
    c.widths = (8, 8, 8)
    c.stem_width = 4
    model = make_model(c, num_classes=10, seed=0)
    assert model.stem.out_features == 4
    a = jax.tree.leaves(nnx.state(make_model(c, 10, seed=0), nnx.Param))
    b = jax.tree.leaves(nnx.state(make_model(c, 10, seed=1), nnx.Param))
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))
    c.name = "vgg"
    with pytest.raises(ValueError, match="unknown model 'vgg'"):
        make_model(c, 10, 0)
    with pytest.raises(ValueError, match="unknown head 'arc'"):
        make_head("arc", 4, 2, nnx.Rngs(0))


def test_bfloat16_compute_gives_float32_logits():
    c = base_config().model
    c.widths = (8, 8, 8)
    c.compute_dtype = "bfloat16"
    model = make_model(c, num_classes=10, seed=0)
    logits = model(jnp.ones((2, 32, 32, 3)))
    assert logits.dtype == jnp.float32 and np.all(np.isfinite(logits))
    assert model.blocks[0].conv1.dtype == jnp.bfloat16


def _cnn_config(**keys):
    c = base_config().model
    c.widths = (8, 8, 8)
    c.update(keys)
    return c


def test_whitened_stem_decorrelates_patches_and_is_not_a_parameter():
    rng = np.random.default_rng(0)
    # Correlated images: smooth noise, so that neighbouring pixels and channels covary.
    images = rng.normal(size=(200, 17, 17, 3)).cumsum(1).cumsum(2)
    model = make_model(_cnn_config(stem="whitened", stem_width=24), 10, seed=0)
    model.stem.fit(images)
    out = np.asarray(model.stem(jnp.asarray(images, jnp.float32)))[:, :-1, :-1]  # valid 2×2 patches only
    half = out.reshape(-1, 24)[:, :12]
    np.testing.assert_allclose(np.cov(half, rowvar=False), np.eye(12), atol=0.05)
    np.testing.assert_allclose(out[..., 12:], -out[..., :12], rtol=1e-6, atol=1e-6)
    params = nnx.state(model, nnx.Param)
    assert "stem" not in params  # frozen: no gradient, no weight decay
    with pytest.raises(ValueError, match="even width"):
        make_model(_cnn_config(stem="whitened", stem_width=26), 10, seed=0)


def test_identity_init_passes_each_block_input_through_its_first_filters():
    network = CNN((8, 16), identity_init=True, rngs=nnx.Rngs(0))
    conv = network.blocks[1].conv1  # 8 → 16 channels
    x = jax.random.normal(jax.random.key(1), (2, 6, 6, 8))
    y = conv(x)
    np.testing.assert_allclose(y[..., :8], x, atol=1e-6)  # the first 8 filters copy the input
    assert float(jnp.std(y[..., 8:])) > 0.1  # the others stay random
    square = network.blocks[0].conv2.kernel[...]
    np.testing.assert_array_equal(square[1, 1], jnp.eye(square.shape[-1]))


def test_head_scale_scales_linear_logits_and_a_cosine_head_refuses_it():
    x = jax.random.normal(jax.random.key(0), (4, 16))
    plain, scaled = (make_head("linear", 16, 10, nnx.Rngs(0), s) for s in (1.0, 1 / 9))
    np.testing.assert_allclose(scaled(x), plain(x) / 9, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="head_scale"):
        make_head("cosine", 16, 10, nnx.Rngs(0), 2.0)
