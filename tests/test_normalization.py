"""BatchNorm (with running statistics), LayerNorm and GroupNorm: values against hand
computations, manual rules against jax.grad, state through training steps and vmapped trials."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnn import (
    BatchNorm,
    Dense,
    GroupNorm,
    LayerNorm,
    Relu,
    ShapeError,
    losses,
    manual,
    serial,
)
from jaxnn.train import make_step

CASES = [
    (BatchNorm(), (5,)),
    (BatchNorm(momentum=0.9), (4, 3, 6)),
    (BatchNorm(use_scale=False), (3, 3, 2)),
    (LayerNorm(), (5,)),
    (LayerNorm(use_bias=False), (3, 3, 4)),
    (GroupNorm(2), (3, 3, 4)),
    (GroupNorm(3), (6,)),
]


def _perturbed(params, key):
    """Params away from their init (scale 1, bias 0), so every term of a rule matters."""
    return jax.tree.map(lambda p: p + 0.5 * jax.random.normal(key, p.shape, p.dtype), params)


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize(("layer", "shape"), CASES, ids=lambda c: str(c))
def test_rule_equals_vjp_of_apply(layer, shape, batch, train, key):
    _, params, state = layer.init(key, (None, *shape))
    params = _perturbed(params, jax.random.key(1))
    state = jax.tree.map(lambda s: s + 0.3, state)  # running statistics not at their init
    x = 2 * jax.random.normal(jax.random.key(2), (batch, *shape)) + 1
    # The plain forward: on CPU, BatchNorm's own apply differentiates by this very rule.
    y, vjp = jax.vjp(lambda p, xx: layer.reference.apply(p, state, xx, train=train)[0],
                     params, x)
    dy = jax.random.normal(jax.random.key(3), y.shape)
    want = vjp(dy)
    got = layer.backward(params, state, x, y, dy, train=train)
    _assert_leaves_close(got, want, 1e-10)


def _assert_leaves_close(got, want, rtol):
    """Leaf by leaf: same shape, float64, within ``rtol`` of the leaf's largest value."""
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        assert g.shape == w.shape and g.dtype == jnp.float64
        scale = float(jnp.max(jnp.abs(w)))
        assert float(jnp.max(jnp.abs(g - w))) <= rtol * max(scale, 1e-300)


@pytest.mark.parametrize("shape", [(7, 3), (1, 3), (7, 4, 4, 3)])
def test_batchnorm_grad_in_training_runs_its_rule_on_cpu(shape, key):
    """jax.grad of a training-mode BatchNorm runs its manual rule on CPU (8-11% faster
    train steps, BENCHMARKS.md) and equals autodiff of the plain forward, also vmapped
    over stacked trials; the new state is the plain one's, and eval mode stays plain."""
    layer = BatchNorm(momentum=0.8)
    _, params, state = layer.init(key, (None, *shape[1:]))
    params = _perturbed(params, jax.random.key(1))
    state = jax.tree.map(lambda s: s + 0.3, state)
    x = 2 * jax.random.normal(jax.random.key(2), shape) + 1

    def loss(apply):
        def value(p, xx):
            y, new_state = apply(p, state, xx, train=True)
            return jnp.sum(jnp.tanh(y) ** 2), new_state
        return value

    fast, plain = loss(layer.apply), loss(layer.reference.apply)
    jaxpr = str(jax.make_jaxpr(fast)(params, x))
    assert ("custom_vjp_call" in jaxpr) == (jax.default_backend() == "cpu")
    gradient = jax.jit(jax.grad(fast, argnums=(0, 1), has_aux=True))
    got, got_state = gradient(params, x)
    want, want_state = jax.grad(plain, argnums=(0, 1), has_aux=True)(params, x)
    _assert_leaves_close(got, want, 1e-12)
    _assert_leaves_close(got_state, want_state, 1e-14)
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, 2 * leaf, -leaf]), params)
    vmapped = jax.jit(jax.vmap(gradient, in_axes=(0, None)))(stacked, x)
    for trial in range(3):
        alone = jax.grad(plain, argnums=(0, 1), has_aux=True)(
            jax.tree.map(lambda leaf, t=trial: leaf[t], stacked), x)
        _assert_leaves_close(jax.tree.map(lambda leaf, t=trial: leaf[t], vmapped), alone,
                             1e-12)
    assert layer.apply(params, state, x, train=False)[1] is state
    assert "custom_vjp_call" not in str(jax.make_jaxpr(
        lambda p: layer.apply(p, state, x, train=False)[0])(params))


def test_batchnorm_train_normalizes_with_batch_statistics_and_eval_with_running(key):
    layer = BatchNorm(momentum=0.8)
    _, params, state = layer.init(key, (None, 2, 2, 3))
    params = _perturbed(params, key)
    x = np.asarray(jax.random.normal(key, (4, 2, 2, 3))) * 3 + 2
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
    y, new_state = layer.apply(params, state, jnp.asarray(x), train=True)
    scale, bias = np.asarray(params["scale"]), np.asarray(params["bias"])
    np.testing.assert_allclose(y, scale * (x - mean) / np.sqrt(var + 1e-5) + bias, rtol=1e-12)
    np.testing.assert_allclose(new_state["mean"], 0.8 * 0 + 0.2 * mean, rtol=1e-12)
    np.testing.assert_allclose(new_state["var"], 0.8 * 1 + 0.2 * var, rtol=1e-12)
    # Eval mode: the running statistics, by hand; the state comes back unchanged.
    y_eval, same = layer.apply(params, new_state, jnp.asarray(x))
    running_mean, running_var = np.asarray(new_state["mean"]), np.asarray(new_state["var"])
    np.testing.assert_allclose(
        y_eval, scale * (x - running_mean) / np.sqrt(running_var + 1e-5) + bias, rtol=1e-12)
    assert same is new_state


def test_running_statistics_after_training_steps_equal_a_numpy_ema(key):
    """BatchNorm first, so its inputs are the data: the state after N steps of training is
    the exponential moving average of the minibatches' statistics."""
    net = serial(BatchNorm(momentum=0.9), Dense(3))
    _, params, state = net.init(key, (None, 4))
    opt = optax.sgd(0.1)
    step = jax.jit(make_step(net, losses.softmax_cross_entropy, opt))
    opt_state = opt.init(params)
    batches = np.asarray(jax.random.normal(key, (6, 8, 4))) * np.array([1, 2, 3, 4]) + 5
    mean, var = np.zeros(4), np.ones(4)
    for xb in batches:
        params, state, opt_state, _, _ = step(params, state, opt_state, jnp.asarray(xb),
                                              jnp.arange(8) % 3)
        mean = 0.9 * mean + 0.1 * xb.mean(axis=0)
        var = 0.9 * var + 0.1 * xb.var(axis=0)
    np.testing.assert_allclose(state[0]["mean"], mean, rtol=1e-12)
    np.testing.assert_allclose(state[0]["var"], var, rtol=1e-12)


@pytest.mark.parametrize("backprop", ["autodiff", "manual"])
def test_mixed_precision_updates_the_statistics_in_their_own_dtype(backprop, key):
    """With bfloat16 compute, the float32 running mean follows a float32 EMA of the
    batches' means (in bfloat16, 0.99 rounds to 0.988 and small updates round away: it
    stalled near 8 of 10)."""
    net = serial(BatchNorm(), Dense(2))
    _, params, state = net.init(key, (None, 3))
    params, state = jax.tree.map(lambda a: a.astype(jnp.float32), (params, state))
    opt = optax.sgd(0.0)
    step = jax.jit(make_step(net, losses.mse, opt, backprop=backprop,
                             compute_dtype=jnp.bfloat16))
    opt_state = opt.init(params)
    x = (jax.random.normal(key, (64, 3)) + 10.0).astype(jnp.float32)
    batch_mean = np.asarray(jnp.mean(x.astype(jnp.bfloat16), axis=0), np.float64)
    for _ in range(600):
        params, state, opt_state, _, _ = step(params, state, opt_state, x,
                                              jnp.zeros((64, 2), jnp.float32))
    assert state[0]["mean"].dtype == jnp.float32
    want = batch_mean * (1 - np.float32(0.99) ** 600)  # the EMA from 0
    eps = float(jnp.finfo(jnp.bfloat16).eps)
    np.testing.assert_allclose(state[0]["mean"], want, rtol=eps)


@pytest.mark.parametrize("backprop", ["autodiff", "manual"])
def test_vmapped_trials_each_keep_their_own_statistics(backprop, key):
    """Three trials (learning rates) of a net whose BatchNorm sees trained features:
    vmapped, each trial's params and state equal its solo run's."""
    net = serial(Dense(6), BatchNorm(momentum=0.5), Relu(), Dense(3))
    _, params, state = net.init(key, (None, 4))
    xs = jax.random.normal(key, (5, 8, 4))
    ys = jnp.arange(8) % 3

    def run(rate):
        opt = optax.sgd(rate)
        step = make_step(net, losses.softmax_cross_entropy, opt, backprop=backprop)

        def body(carry, xb):
            p, s, o = carry
            p, s, o, _, _ = step(p, s, o, xb, ys)
            return (p, s, o), None

        (p, s, _), _ = jax.lax.scan(body, (params, state, opt.init(params)), xs)
        return p, s

    rates = jnp.asarray([0.01, 0.3, 1.0])
    vmapped = jax.jit(jax.vmap(run))(rates)
    statistics = [float(vmapped[1][1]["mean"][i, 0]) for i in range(3)]
    assert len(set(statistics)) == 3  # the trials' statistics really differ
    for trial in range(3):
        alone = jax.jit(run)(rates[trial])
        for got, want in zip(jax.tree.leaves(vmapped), jax.tree.leaves(alone), strict=True):
            np.testing.assert_allclose(got[trial], want, rtol=1e-10, atol=1e-14)


def test_planted_wrong_batchnorm_rule_is_named(key):
    """The classic slip: forgetting that the batch mean depends on x (no Σdy term)."""
    norm = BatchNorm()

    def backward(params, state, x, y, dy, **kw):
        grads, dx = norm.backward(params, state, x, y, dy, **kw)
        return grads, dx + jnp.mean(dy, axis=0, keepdims=True) * params["scale"][None, :] / (
            jnp.sqrt(jnp.var(x, axis=0, keepdims=True) + 1e-5))

    net = serial(Dense(5), norm._replace(backward=backward), Relu(), Dense(3))
    _, params, state = net.init(key, (None, 4))
    x = jax.random.normal(key, (7, 4))
    with pytest.raises(manual.GradientCheckError) as error:
        manual.check(net, losses.softmax_cross_entropy, params, state, x, jnp.arange(7) % 3,
                     train=True, verbose=False)
    assert "layer rule layer 1 (BatchNorm(momentum=0.99))" in str(error.value)


def test_normalizations_in_a_net_check_in_both_modes(key):
    net = serial(Dense(6, use_bias=False), BatchNorm(), Relu(), Dense(6), GroupNorm(2), Relu(),
                 LayerNorm(), Dense(3))
    _, params, state = net.init(key, (None, 4))
    params = _perturbed(params, jax.random.key(1))
    x = jax.random.normal(key, (7, 4))
    for train in (True, False):
        report = manual.check(net, losses.softmax_cross_entropy, params, state, x,
                              jnp.arange(7) % 3, train=train, verbose=False)
        assert report.worst_autodiff_rel < 1e-10


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(("layer", "shape"), CASES, ids=lambda c: str(c))
def test_jit_vmap_and_dtype(layer, shape, dtype, key):
    _, params, state = layer.init(key, (None, *shape))
    params, state = jax.tree.map(lambda a: a.astype(dtype), (params, state))
    x = jax.random.normal(key, (4, *shape), dtype)
    eager, new_state = layer.apply(params, state, x, train=True)
    assert eager.dtype == dtype
    assert all(s.dtype == dtype for s in jax.tree.leaves(new_state))
    jitted = jax.jit(lambda p, s, xx: layer.apply(p, s, xx, train=True))(params, state, x)
    eps = float(jnp.finfo(dtype).eps)
    np.testing.assert_allclose(jitted[0], eager, rtol=0, atol=64 * eps * float(
        jnp.max(jnp.abs(eager))))
    # vmap over stacked params (an ensemble of 3) and over examples (eval mode).
    stacked = jax.tree.map(lambda a: jnp.stack([a, a + 1, a - 1]), params)
    ensemble = jax.vmap(lambda p: layer.apply(p, state, x, train=True)[0])(stacked)
    np.testing.assert_allclose(ensemble[0], eager, rtol=0,
                               atol=64 * eps * float(jnp.max(jnp.abs(eager))))
    evaluated = layer.apply(params, state, x)[0]
    per_example = jax.vmap(lambda xi: layer.apply(params, state, xi[None])[0][0])(x)
    np.testing.assert_allclose(per_example, evaluated, rtol=0,
                               atol=64 * eps * float(jnp.max(jnp.abs(evaluated))))


@pytest.mark.parametrize(
    ("layer", "shape", "fragment"),
    [(GroupNorm(3), (None, 4, 4, 8), "3 groups do not divide the 8 channels"),
     (BatchNorm(), (None,), "rank >= 2"),
     (LayerNorm(), (None, None), "known number of channels")],
)
def test_shape_errors(layer, shape, fragment, key):
    with pytest.raises(ShapeError, match=fragment):
        layer.init(key, shape)


@pytest.mark.parametrize(
    ("make", "fragment"),
    [(lambda: BatchNorm(momentum=1.0), "momentum"), (lambda: LayerNorm(epsilon=0), "epsilon"),
     (lambda: GroupNorm(0), "num_groups"),
     (lambda: BatchNorm(epsilon=float("nan")), "epsilon must be finite and > 0, got nan"),
     (lambda: GroupNorm(2, epsilon=float("inf")), "epsilon must be finite and > 0, got inf"),
     (lambda: BatchNorm(epsilon=True), "epsilon must be finite and > 0, got True")],
)
def test_bad_arguments(make, fragment):
    with pytest.raises(ValueError, match=fragment):
        make()


@pytest.mark.parametrize(("layer", "shape"), CASES, ids=lambda c: str(c))
def test_integer_input_is_normalized_as_its_float_values(layer, shape, key):
    """Raw uint8 pixels: in their own dtype BatchNorm truncated its running statistics (a
    variance of 0.6 to 0) and wrapped ``x - mean`` around; each normalization now computes
    in its params' (or state's) float dtype, as on the same values given as floats."""
    _, params, state = layer.init(key, (None, *shape))
    params = _perturbed(params, key)
    state = jax.tree.map(lambda s: s + jnp.linspace(0.4, 0.6, s.size).reshape(s.shape) * 200,
                         state)
    pixels = jax.random.randint(key, (7, *shape), 0, 256).astype(jnp.uint8)
    floats = pixels.astype(jnp.float64)
    dy = jax.random.normal(key, (7, *shape))
    for train in (True, False):
        got, got_state = layer.apply(params, state, pixels, train=train)
        want, want_state = layer.apply(params, state, floats, train=train)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), got_state,
                     want_state)
        rule = layer.backward(params, state, pixels, got, dy, train=train)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12),
                     rule, layer.backward(params, state, floats, want, dy, train=train))


def test_batchnorm_on_an_empty_batch_keeps_its_running_statistics():
    """An empty batch's mean and variance are NaN; they made the running statistics NaN for
    good."""
    layer = BatchNorm()
    _, params, state = layer.init(jax.random.key(0), (None, 2))
    y, new_state = layer.apply(params, state, jnp.ones((0, 2)), train=True)
    assert y.shape == (0, 2)
    for key in ("mean", "var"):
        np.testing.assert_array_equal(new_state[key], state[key])


@pytest.mark.parametrize("train", [True, False])
@pytest.mark.parametrize(("layer", "shape"), [(BatchNorm(), (2, 1)), (LayerNorm(), (1, 2)),
                                              (GroupNorm(1), (1, 2))], ids=str)
def test_16_bit_inputs_are_normalized_with_float32_statistics(layer, shape, train):
    """In float16, [267.0, 266.75] normalized to [0, -1.41]: its statistics were computed in
    the input's dtype. Computed in float32, as Flax does, it is [1, -1] (less ε's share)."""
    values = np.array([267.0, 266.75])
    _, params, state = layer.init(jax.random.key(0), (None, *shape[1:]))
    params = jax.tree.map(lambda p: p.astype(jnp.float16), params)
    state = {"mean": jnp.full_like(state["mean"], values.mean()),
             "var": jnp.full_like(state["var"], values.var())} if state else state
    x = jnp.asarray(values.reshape(shape), jnp.float16)
    y, _ = layer.apply(params, state, x, train=train)
    want = (values - values.mean()) / np.sqrt(values.var() + 1e-5)
    eps = float(jnp.finfo(jnp.float16).eps)
    assert y.dtype == jnp.float16
    np.testing.assert_allclose(np.asarray(y, np.float64).ravel(), want, rtol=2 * eps)
    # The rule, in float16, against jax.grad of the float64 forward on the same values.
    dy = jnp.asarray(np.array([0.5, -2.0]).reshape(shape), jnp.float16)
    _, dx = layer.backward(params, state, x, y, dy, train=train)
    wide = jax.tree.map(lambda a: a.astype(jnp.float64), (params, state, x, dy))
    _, vjp = jax.vjp(lambda xx: layer.reference.apply(wide[0], wide[1], xx, train=train)[0],
                     wide[2])
    (want_dx,) = vjp(wide[3])
    assert dx.dtype == jnp.float16
    scale = float(jnp.max(jnp.abs(want_dx)))
    np.testing.assert_allclose(np.asarray(dx, np.float64), want_dx, atol=4 * eps * scale)


@pytest.mark.parametrize("norm", [BatchNorm(), LayerNorm(), GroupNorm(4)], ids=str)
def test_float32_rules_stay_accurate_for_inputs_far_from_zero(norm):
    """Features at 255 ± 1 (unstandardized pixels) through Dense and a normalization: in
    float32 the rules' ``x̂`` summed to a few eps·255 instead of 0, which their ``dx`` kept
    and the Dense's weight gradient multiplied by 255 (BatchNorm: 7e-3 relative error
    against float64, autodiff of the same forward 2e-5)."""
    offset = 255.0
    net = serial(Dense(16), norm, Dense(2))
    params, state = jax.tree.map(lambda a: a.astype(jnp.float32),
                                 net.init(jax.random.key(0), (None, 10))[1:])
    x = offset + jax.random.normal(jax.random.key(5), (64, 10), jnp.float32)
    y = jax.random.normal(jax.random.key(6), (64, 2), jnp.float32)

    def loss(apply):
        return lambda p, s, xx, yy: losses.mse.value(apply(p, s, xx, train=True)[0], yy)

    wide = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), (params, state, x, y))
    want = np.asarray(jax.grad(loss(net.reference.apply))(*wide)[0]["w"])
    got = {"manual": manual.grad(net, losses.mse, params, state, x, y, train=True)[0]["w"]}
    if str(norm).startswith("BatchNorm"):  # jax.grad runs its rule on CPU
        got["jax.grad"] = jax.grad(loss(net.apply))(params, state, x, y)[0]["w"]
    # x − μ at 255 is exact to eps·255 of σ = 1: so is x̂, and so are the gradients.
    bound = 16 * float(jnp.finfo(jnp.float32).eps) * offset
    for how, grads in got.items():
        assert grads.dtype == jnp.float32
        error = np.max(np.abs(np.asarray(grads, np.float64) - want)) / np.max(np.abs(want))
        assert error <= bound, (how, error, bound)
