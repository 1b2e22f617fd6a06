"""The layer protocol: shape inference, summaries, errors and JAX transformations."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from numerics import assert_close

import jaxnn
from jaxnn import (
    AvgPool2D,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Gelu,
    Identity,
    LeakyRelu,
    LogSoftmax,
    MaxPool2D,
    Relu,
    ShapeError,
    Sigmoid,
    Softmax,
    Softplus,
    Tanh,
    serial,
    summary,
)
from jaxnn.layers import _spatial, _winograd

ACTIVATIONS = [Identity(), Sigmoid(), Tanh(), Relu(), LeakyRelu(0.1), Gelu(), Gelu(False),
               Softplus(), Softmax(), LogSoftmax()]

# (layer, input shape without batch)
SHAPE_CASES = [
    *[(act, (5,)) for act in ACTIVATIONS],
    (Dense(3), (5,)),
    (Dense(1, use_bias=False), (4,)),
    (Flatten(), (3, 4, 2)),
    (Dropout(0.3), (6,)),
    *[
        (Conv2D(4, k, stride=s, padding=p), (9, 8, 3))
        for k in (1, 3, (2, 3))
        for s in (1, 2, 3)
        for p in ("SAME", "VALID", 1, ((0, 1), (2, 0)))
    ],
    *[
        (pool(w, s, p), (9, 8, 3))
        for pool in (MaxPool2D, AvgPool2D)
        for w in (2, 3)
        for s in (None, 1, 2)
        for p in ("SAME", "VALID", 1)
    ],
    (AvgPool2D(3, 2, padding="SAME", count_include_pad=False), (7, 7, 2)),
    (serial(Conv2D(4, 3), Relu(), MaxPool2D(2), Flatten(), Dense(10), LogSoftmax()), (8, 8, 1)),
    (serial(Dense(8), Tanh(), serial(Dense(4), Relu()), Dense(2)), (3,)),
]


@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(("layer", "shape"), SHAPE_CASES, ids=lambda c: str(c))
def test_init_predicts_apply_shape(layer, shape, batch, key):
    out_shape, params = layer.init(key, (None, *shape))
    assert out_shape[0] is None
    x = jax.random.normal(jax.random.key(1), (batch, *shape))
    y = layer.apply(params, x, key=jax.random.key(2), train=True)
    assert y.shape == (batch, *out_shape[1:])
    y_eval = layer.apply(params, x)
    assert y_eval.shape == y.shape
    # A concrete batch size is carried through too.
    assert layer.init(key, (batch, *shape))[0] == y.shape


def test_conv_example_from_the_notes(key):
    # A 5x5x3 input with zero padding 1 (7x7x3 once padded), two 3x3x3 filters, stride 2.
    net = serial(Conv2D(2, 3, stride=2, padding=1))
    out_shape, params = net.init(key, (None, 5, 5, 3))
    assert out_shape == (None, 3, 3, 2)
    assert jaxnn.param_count(params) == (3 * 3 * 3 + 1) * 2 == 56
    assert "56" in summary(net, (None, 5, 5, 3))


@pytest.mark.parametrize(
    ("layer", "in_hw", "out_hw"),
    [
        (Conv2D(1, 3, stride=2, padding="VALID"), (5, 5), (2, 2)),  # (5 - 3 + 0)/2 + 1
        (Conv2D(1, 3, stride=1, padding=1), (5, 5), (5, 5)),
        (Conv2D(1, 5, stride=1, padding="VALID"), (32, 32), (28, 28)),
        (Conv2D(1, 3, stride=2, padding="SAME"), (7, 6), (4, 3)),  # ceil(n / s)
        (MaxPool2D(2), (28, 28), (14, 14)),
        (MaxPool2D(3, 2), (7, 7), (3, 3)),
        (AvgPool2D(2, padding="SAME"), (5, 5), (3, 3)),
    ],
)
def test_output_sizes(layer, in_hw, out_hw, key):
    assert layer.init(key, (None, *in_hw, 1))[0] == (None, *out_hw, 1)


def test_summary_table_lists_layers_and_total():
    net = serial(Conv2D(8, 3), Relu(), MaxPool2D(2), Flatten(), Dense(10))
    text = summary(net, (None, 8, 8, 1))
    lines = text.splitlines()
    assert any("Conv2D" in line and "(None, 8, 8, 8)" in line and "80" in line for line in lines)
    assert any("MaxPool2D" in line and "(None, 4, 4, 8)" in line for line in lines)
    assert any("Dense(10)" in line and "1,290" in line for line in lines)
    assert lines[-1] == "total params: 1,370"


def test_summary_allocates_nothing():
    # A trillion-parameter stack would exhaust memory if summary built arrays.
    net = serial(Dense(1_000_000), Dense(1_000_000))
    total = (10 + 1) * 10**6 + (10**6 + 1) * 10**6
    assert summary(net, (None, 10)).endswith(f"total params: {total:,}")


@pytest.mark.parametrize(
    ("net", "shape", "fragments"),
    [
        (serial(Conv2D(4, 3), Relu(), Dense(10)), (None, 8, 8, 1),
         ["layer 2", "Dense(10)", "(None, 8, 8, 4)", "Flatten"]),
        (serial(Dense(3), Conv2D(2)), (None, 5), ["layer 1", "Conv2D", "rank 4", "(None, 3)"]),
        (serial(Conv2D(2, 5, padding="VALID")), (None, 3, 3, 1),
         ["layer 0", "window (5, 5)", "(3, 3)"]),
        (serial(Flatten(), serial(Dense(3), MaxPool2D(2))), (None, 4, 4),
         ["layer 1", "MaxPool2D", "rank 4"]),
    ],
)
def test_shape_errors_name_layer_and_shapes(net, shape, fragments, key):
    with pytest.raises(ShapeError) as error:
        net.init(key, shape)
    for fragment in fragments:
        assert fragment in str(error.value)
    with pytest.raises(ShapeError):
        summary(net, shape)


def test_forgotten_parentheses_are_caught():
    with pytest.raises(TypeError, match=r"Relu\(\)"):
        serial(Dense(3), Relu)


@pytest.mark.parametrize(
    "make",
    [lambda: Dense(0), lambda: Conv2D(2, 0), lambda: Conv2D(2, padding="FULL"),
     lambda: MaxPool2D(2, padding=-1), lambda: Dropout(1.0), lambda: Dropout(-0.1),
     lambda: Dense(3, w_init="glorious")],
)
def test_bad_constructor_arguments(make):
    with pytest.raises(ValueError):
        make()


def test_layer_is_a_namedtuple_of_three_functions(key):
    init, apply, backward = Dense(3)
    out_shape, params = init(key, (None, 2))
    assert out_shape == (None, 3)
    assert set(params) == {"w", "b"}
    assert apply(params, jnp.ones((1, 2))).shape == (1, 3)
    assert Dense(3)._fields == ("init", "apply", "backward")
    assert callable(backward)


def test_public_module_only_reexports():
    import jaxnn as module
    from jaxnn import Conv2D, Dense, Flatten, MaxPool2D, Relu, serial, summary  # noqa: F401

    source = pathlib.Path(module.__file__).read_text()
    code = [line for line in source.splitlines()
            if line and not line.startswith(("from ", "import ", "#", '"""', "__version__"))
            and not line.startswith(" ")]
    assert code == ["This module only re-exports the public names; each concept lives in its "
                    "own module."]


# --- transformations, in both precisions -------------------------------------------------

TRANSFORM_CASES = [
    *[(act, (5,)) for act in ACTIVATIONS],
    (Dense(3), (5,)),
    (Flatten(), (3, 2, 2)),
    (Dropout(0.5), (6,)),
    (Conv2D(3, 3, stride=2, padding=1), (6, 6, 2)),
    (MaxPool2D(2), (6, 6, 2)),
    (AvgPool2D(3, 2, padding="SAME"), (6, 6, 2)),
    (serial(Conv2D(3, 3), Relu(), MaxPool2D(2), Flatten(), Dense(4)), (6, 6, 2)),
]


def _cast(tree, dtype):
    return jax.tree.map(lambda leaf: leaf.astype(dtype), tree)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(("layer", "shape"), TRANSFORM_CASES, ids=lambda c: str(c))
def test_jit_vmap_grad(layer, shape, dtype, key):
    _, params = layer.init(key, (None, *shape))
    params = _cast(params, dtype)
    x = jax.random.normal(jax.random.key(1), (4, *shape), dtype)
    drop_key = jax.random.key(2)

    def forward(p, xs):
        return layer.apply(p, xs, key=drop_key, train=True)

    eager = forward(params, x)
    assert eager.dtype == dtype

    def check(got, want):  # float32 agrees up to rounding; float64 claims exactness.
        if dtype == jnp.float32:
            assert_close(got, want)
        else:
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)

    check(jax.jit(forward)(params, x), eager)

    # vmap over examples: each example as a batch of one.
    if "Dropout" not in layer.name:  # A mask drawn per example differs by design.
        per_example = jax.vmap(lambda xi: forward(params, xi[None])[0])(x)
        check(per_example, eager)

    # vmap over stacked parameter pytrees (an ensemble of 3 inits).
    keys = jax.random.split(key, 3)
    stacked = _cast(jax.vmap(lambda k: layer.init(k, (None, *shape))[1])(keys), dtype)
    ensemble = jax.vmap(forward, in_axes=(0, None), axis_size=3)(stacked, x)
    assert ensemble.shape == (3, *eager.shape)
    first = _cast(layer.init(keys[0], (None, *shape))[1], dtype)
    check(ensemble[0], forward(first, x))

    # grad with respect to params and input.
    grads = jax.grad(lambda p, xs: jnp.sum(forward(p, xs) ** 2), argnums=(0, 1))(params, x)
    assert jax.tree.structure(grads[0]) == jax.tree.structure(params)
    for leaf in jax.tree.leaves(grads):
        assert leaf.dtype == dtype
        assert bool(jnp.all(jnp.isfinite(leaf)))


def test_dropout_rate_is_drop_probability(key):
    x = jnp.ones((200, 100))
    layer = Dropout(0.25)
    y = layer.apply((), x, key=key, train=True)
    dropped = float(jnp.mean(y == 0))
    assert 0.23 < dropped < 0.27
    np.testing.assert_allclose(y[y != 0], 1 / 0.75)
    np.testing.assert_array_equal(layer.apply((), x), x)  # identity in evaluation
    with pytest.raises(ValueError, match="key"):
        layer.apply((), x, train=True)


def test_dropout_rate_can_be_traced(key):
    x = jnp.ones((100, 100))

    @jax.jit
    def dropped_fraction(rate):
        return jnp.mean(Dropout(rate).apply((), x, key=key, train=True) == 0)

    assert 0.45 < float(dropped_fraction(0.5)) < 0.55
    assert float(dropped_fraction(0.0)) == 0.0


def test_params_dtype_argument(key):
    _, params = Dense(3, dtype=jnp.float32).init(key, (None, 2))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    _, params = Conv2D(3, dtype=jnp.float64).init(key, (None, 4, 4, 1))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}


def _direct_conv(padding, hw):
    """Conv2D's forward as XLA's direct convolution (3x3, stride 1, with bias)."""
    pads = _spatial.explicit_pads(padding, hw, (3, 3), (1, 1))

    def apply(params, x):
        y = lax.conv_general_dilated(x, params["w"], (1, 1), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + params["b"][None, None, None, :]

    return apply


@pytest.mark.parametrize(
    "hw, extra, padding",
    [((9, 8), 0, "SAME"), ((9, 8), 5, "VALID"), ((4, 5), 0, ((0, 2), (2, 1))), ((3, 3), 1, 1)],
)
def test_winograd_conv2d_equals_direct_convolution(hw, extra, padding, key):
    """On CPU a 3x3 stride-1 Conv2D with enough input channels runs as Winograd's F(2x2, 3x3):
    its output, its rule's gradients (called, or run by jax.grad) and JAX's own gradient of it
    equal the direct convolution's in float64."""
    channels = _winograd.MIN_CHANNELS + extra
    layer = Conv2D(5, 3, padding=padding)
    x = jax.random.normal(key, (3, *hw, channels))
    _, params = layer.init(key, (None, *hw, channels))
    jaxpr = str(jax.make_jaxpr(layer.apply)(params, x))
    assert ("conv_general_dilated" in jaxpr) == (jax.default_backend() != "cpu")

    y, rule_vjp = jax.vjp(layer.apply, params, x)  # jax.grad runs the rule on CPU
    _, autodiff = jax.vjp(layer.reference.apply, params, x)  # JAX through F(2x2, 3x3)
    want, direct = jax.vjp(_direct_conv(padding, hw), params, x)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    cotangent = jax.random.normal(jax.random.key(1), y.shape)
    expected = jax.tree.leaves(direct(cotangent))
    rule = layer.backward(params, x, y, cotangent)
    for grads in (rule_vjp(cotangent), autodiff(cotangent), rule):
        for got, wanted in zip(jax.tree.leaves(grads), expected, strict=True):
            np.testing.assert_allclose(got, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("layer, extra", [(Conv2D(4, 3), -1), (Conv2D(4, 3, stride=2), 0),
                                          (Conv2D(4, 5), 0), (Conv2D(4, (3, 2)), 0)])
def test_other_convolutions_stay_direct(layer, extra, key):
    channels = _winograd.MIN_CHANNELS + extra
    x = jnp.zeros((2, 6, 6, channels))
    _, params = layer.init(key, (None, 6, 6, channels))
    assert "conv_general_dilated" in str(jax.make_jaxpr(layer.apply)(params, x))


def test_bfloat16_convolutions_stay_direct(key):
    layer, channels = Conv2D(4, 3, dtype=jnp.bfloat16), _winograd.MIN_CHANNELS
    x = jnp.zeros((2, 6, 6, channels), jnp.bfloat16)
    _, params = layer.init(key, (None, 6, 6, channels))
    assert "conv_general_dilated" in str(jax.make_jaxpr(layer.apply)(params, x))


def test_winograd_conv2d_float32_rounding(key):
    """In float32 the Winograd and the direct convolution agree up to rounding: 64 float32 eps
    of the output's scale (workload B's second convolution)."""
    layer = Conv2D(64, 3, dtype=jnp.float32)
    x = jax.random.normal(key, (4, 14, 14, 32), jnp.float32)
    _, params = layer.init(key, (None, 14, 14, 32))
    got, want = layer.apply(params, x), _direct_conv("SAME", (14, 14))(params, x)
    assert_close(got, want)


def test_winograd_conv2d_under_vmap_equals_each_alone(key):
    """A sweep vmaps trials over parameter sets: jax.grad through the Winograd rule, vmapped,
    equals JAX's gradient of each set's plain forward."""
    channels = _winograd.MIN_CHANNELS
    net = serial(Conv2D(channels, 3), Relu(), Conv2D(4, 3), MaxPool2D(2), Flatten(), Dense(3))
    params = jax.vmap(lambda k: net.init(k, (None, 6, 6, 2))[1])(jax.random.split(key, 3))
    x = jax.random.normal(jax.random.key(1), (4, 6, 6, 2))
    vmapped = jax.jit(jax.vmap(jax.grad(lambda p: jnp.sum(net.apply(p, x) ** 2))))(params)
    for trial in range(3):
        alone = jax.tree.map(lambda leaf, t=trial: leaf[t], params)
        want = jax.grad(lambda p: jnp.sum(net.reference.apply(p, x) ** 2))(alone)
        got = jax.tree.map(lambda leaf, t=trial: leaf[t], vmapped)
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bias", [{}, {"shared_bias": True}, {"use_bias": False}],
                         ids=["bias", "shared_bias", "no_bias"])
def test_dense_float32_gradients_through_a_transposed_copy(bias, key):
    """On CPU a float32 Dense differentiates through a materialized [x^T; 1] (XLA runs that
    matmul faster, and it gives the bias gradient too): reverse mode, forward mode, second
    order and vmap over parameter sets all equal JAX's derivatives of the plain
    ``x @ w + b``, in the parameters and the input; so does the manual rule."""
    layer = Dense(6, dtype=jnp.float32, **bias)
    x = jax.random.normal(key, (5, 4), jnp.float32)
    _, params = layer.init(key, (None, 4))
    params = jax.tree.map(lambda leaf: leaf + 0.5, params)  # a nonzero bias

    def plain_apply(p, x):
        y = x @ p["w"]
        return y + jnp.broadcast_to(p["b"], (1, 6)) if "b" in p else y

    def loss(apply):
        return lambda p, x: jnp.sum(jnp.tanh(apply(p, x)) ** 2)

    fast, plain = loss(layer.apply), loss(plain_apply)
    jaxpr = str(jax.make_jaxpr(jax.grad(fast))(params, x))
    assert ("optimization_barrier" in jaxpr) == (jax.default_backend() == "cpu")
    point = (params, x)
    direction = jax.tree.map(jnp.ones_like, point)

    def derivatives(f):
        gradient = jax.grad(f, argnums=(0, 1))
        return (f(*point), gradient(*point), jax.jvp(f, point, direction)[1],
                jax.jvp(gradient, point, direction)[1],
                jax.hessian(f, argnums=(0, 1))(*point))

    assert_close(derivatives(fast), derivatives(plain))
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, 2 * leaf, -leaf]), params)
    vmapped = jax.vmap(jax.grad(fast), in_axes=(0, None))(stacked, x)
    for trial in range(3):
        alone = jax.grad(plain)(jax.tree.map(lambda leaf, t=trial: leaf[t], stacked), x)
        assert_close(jax.tree.map(lambda leaf, t=trial: leaf[t], vmapped), alone)
    dy = jax.random.normal(jax.random.key(1), (5, 6), jnp.float32)
    rule, rule_dx = layer.backward(params, x, layer.apply(params, x), dy)
    autodiff, autodiff_dx = jax.vjp(plain_apply, params, x)[1](dy)
    assert_close((rule, rule_dx), (autodiff, autodiff_dx))  # shapes included


def test_dense_apply_on_other_ranks_is_the_plain_matmul(key):
    """Dense's init wants (batch, features), but its apply broadcasts over leading axes as
    ``x @ w`` does; the CPU gradient layout only serves rank 2, so other ranks stay plain."""
    layer = Dense(3, dtype=jnp.float32)
    _, params = layer.init(key, (None, 4))
    x = jax.random.normal(key, (2, 5, 4), jnp.float32)
    got = jax.grad(lambda p: jnp.sum(layer.apply(p, x) ** 2))(params)
    want = jax.grad(lambda p: jnp.sum((x @ p["w"] + p["b"][None, None, :]) ** 2))(params)
    assert_close(got, want)
