"""Initializers by name, and losses against optax's reference implementations."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import Conv2D, Dense, initializers, losses


@pytest.mark.parametrize("name", ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                                  "lecun_uniform", "lecun_normal"])
def test_variance_scaling_initializers_have_expected_spread(name, key):
    fan_in, fan_out = 400, 300
    w = initializers.get(name)(key, (fan_in, fan_out), jnp.float64)
    scale = {"glorot": 2 / (fan_in + fan_out), "he": 2 / fan_in, "lecun": 1 / fan_in}
    expected_var = scale[name.split("_")[0]]
    assert float(jnp.var(w)) == pytest.approx(expected_var, rel=0.05)


@pytest.mark.parametrize("name", ["glorot_uniform", "glorot_normal", "he_uniform", "he_normal",
                                  "lecun_uniform", "lecun_normal", "normal(0.3)"])
def test_named_initializers_are_shape_stable(name, key):
    # A weight depends on its (row, unit) index only: a narrower array is the top-left block
    # of a wider one, up to the ratio of their standard deviations.
    init = initializers.get(name)
    small, big = init(key, (30, 40), jnp.float64), init(key, (50, 70), jnp.float64)
    ratio = init.stddev((30, 40)) / init.stddev((50, 70))
    np.testing.assert_allclose(small, big[:30, :40] * ratio, rtol=1e-12)
    assert not np.allclose(small[:, 0], small[:, 1])  # Each unit draws its own values.
    # Truncated normals stay within two standard deviations, as in jax.nn.
    if name.endswith("_normal"):
        assert float(jnp.max(jnp.abs(big))) <= 2 * init.stddev((50, 70)) / 0.8796 + 1e-12


def test_normal_std_and_per_layer_choice(key):
    _, params, _ = Dense(500, w_init="normal(0.02)", b_init="ones").init(key, (None, 400))
    assert float(jnp.std(params["w"])) == pytest.approx(0.02, rel=0.02)
    np.testing.assert_array_equal(params["b"], 1.0)
    assert float(jnp.std(initializers.normal(0.5)(key, (1000,), jnp.float64))) == pytest.approx(
        0.5, rel=0.1)


@pytest.mark.parametrize("bad", ["normal(0)", "normal(-1)", "uniform", "he", "normal(1e400)",
                                 "normal(inf)", "normal(nan)"])
def test_unknown_or_bad_initializer(bad):
    with pytest.raises(ValueError, match="initializer"):
        initializers.get(bad)
    # A layer's argument says which it is (a 1e400 std, read as inf, drew inf weights).
    with pytest.raises(ValueError, match=r"^Dense: w_init must name an initializer; "):
        Dense(3, w_init=bad)
    with pytest.raises(ValueError, match=r"^Conv2D: b_init must name an initializer; "):
        Conv2D(3, b_init=bad)


def _data(key, m=7, n=5):
    k1, k2, k3 = jax.random.split(key, 3)
    logits = jax.random.normal(k1, (m, n))
    labels = jax.random.randint(k2, (m,), 0, n)
    binary = jax.random.bernoulli(k3, 0.5, (m, n)).astype(jnp.float64)
    return logits, labels, binary


def test_losses_match_optax(key):
    logits, labels, binary = _data(key)
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, labels),
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), rtol=1e-12)
    np.testing.assert_allclose(
        losses.softmax_cross_entropy(logits, onehot),
        optax.softmax_cross_entropy(logits, onehot).mean(), rtol=1e-12)
    np.testing.assert_allclose(
        losses.sigmoid_binary_cross_entropy(logits, binary),
        optax.sigmoid_binary_cross_entropy(logits, binary).sum(-1).mean(), rtol=1e-12)
    probs = jax.nn.sigmoid(logits)
    np.testing.assert_allclose(
        losses.binary_cross_entropy(probs, binary),
        optax.sigmoid_binary_cross_entropy(logits, binary).sum(-1).mean(), rtol=1e-10)
    # MSE in the seeds' form: 1/2 ||a - y||^2 averaged over the batch.
    np.testing.assert_allclose(losses.mse(logits, binary),
                               0.5 * jnp.sum((logits - binary) ** 2) / logits.shape[0],
                               rtol=1e-12)


@pytest.mark.parametrize("loss", list(losses.LOSSES.values()), ids=lambda loss: loss.name)
def test_manual_loss_gradient_equals_autodiff(loss, key):
    logits, labels, binary = _data(key)
    pred = jax.nn.sigmoid(logits) if loss.name == "binary_cross_entropy" else logits
    # Target rows need not sum to 1 (e.g. weighted or hand-smoothed labels).
    unnormalized = jax.random.uniform(key, (logits.shape[0], 5), jnp.float64)
    targets = [labels, jax.nn.one_hot(labels, 5, dtype=jnp.float64), unnormalized] \
        if "softmax" in loss.name else [binary]
    for target in targets:
        np.testing.assert_allclose(loss.grad(pred, target), jax.grad(loss.value)(pred, target),
                                   rtol=1e-10, atol=1e-14)


def test_cross_entropy_labels_out_of_range_add_nothing(key):
    # The value wrapped -1 to the last class and gave NaN for labels >= C, while the manual
    # gradient took them as all-zero one-hot rows. 2**40 would wrap to 0 as an int32.
    logits, labels, _ = _data(key)
    labels = labels.at[2].set(-1).at[4].set(5).at[5].set(2**40)
    in_range = np.array([True, True, False, True, False, False, True])
    loss = losses.softmax_cross_entropy
    per_example = optax.softmax_cross_entropy_with_integer_labels(
        logits, jnp.where(in_range, labels, 0))
    for value in (loss.value, jax.jit(loss.value)):
        np.testing.assert_allclose(value(logits, labels),
                                   jnp.sum(jnp.where(in_range, per_example, 0)) / 7, rtol=1e-12)
    onehot = jax.nn.one_hot(labels, 5, dtype=logits.dtype)
    np.testing.assert_allclose(loss(logits, labels), loss(logits, onehot), rtol=1e-12)
    manual, autodiff = loss.grad(logits, labels), jax.grad(loss.value)(logits, labels)
    np.testing.assert_allclose(manual, autodiff, rtol=1e-10, atol=1e-14)
    np.testing.assert_array_equal(manual[~in_range], 0)
    np.testing.assert_allclose(manual, loss.grad(logits, onehot), rtol=1e-12, atol=1e-14)


def test_cross_entropy_rejects_mismatched_targets(key):
    logits, _, _ = _data(key)
    with pytest.raises(ValueError, match="softmax_cross_entropy"):
        losses.softmax_cross_entropy(logits, jnp.zeros((7, 3)))
    with pytest.raises(ValueError, match="unknown loss"):
        losses.get("hinge")


@pytest.mark.parametrize("loss", list(losses.LOSSES.values()), ids=lambda loss: loss.name)
def test_losses_refuse_targets_they_would_broadcast(loss):
    # Under JAX's default rank promotion (N, 1) - (N,) broadcast to (N, N) without a word.
    pred = jnp.full((4, 1), 0.5)
    # (4,) would be integer labels for softmax_cross_entropy; (3,) are too few.
    shapes = [(4, 2), (3, 1), (3,) if "softmax" in loss.name else (4,)]
    with jax.numpy_rank_promotion("allow"):
        for target in (jnp.ones(shape) for shape in shapes):
            for fn in (loss.value, jax.jit(loss.grad)):
                with pytest.raises(ValueError) as error:
                    fn(pred, target)
                assert f"{loss.name}: " in str(error.value)
                assert str(pred.shape) in str(error.value)
                assert str(target.shape) in str(error.value)


def test_float_labels_are_refused():
    """(4,) float targets against (4, 3) logits were cast to int32 labels: 1.7 read as 1."""
    logits = jnp.zeros((4, 3))
    for fn in (losses.softmax_cross_entropy.value, jax.jit(losses.softmax_cross_entropy.grad)):
        with pytest.raises(ValueError, match=r"labels of shape \(4,\) must be integers, got "
                                             r"float"):
            fn(logits, jnp.asarray([0.0, 1.7, 2.0, 1.0]))
