"""The layer protocol: shape inference, summaries, errors and JAX transformations."""

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from numerics import assert_close

import jaxnn
from jaxnn import (
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Conv2DTranspose,
    Dense,
    Dropout,
    Elu,
    FanOut,
    Flatten,
    Gelu,
    GlobalAvgPool,
    GroupNorm,
    Identity,
    LayerNorm,
    LeakyRelu,
    LogSoftmax,
    MaxPool2D,
    Relu,
    Residual,
    Selu,
    ShapeError,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    SumPool2D,
    Tanh,
    serial,
    summary,
)
from jaxnn.layers import _spatial, _winograd

ACTIVATIONS = [Identity(), Sigmoid(), Tanh(), Relu(), LeakyRelu(0.1), Gelu(), Gelu(False),
               Softplus(), Elu(), Elu(0.5), Selu(), Silu(), Softmax(), LogSoftmax()]

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
    *[(SumPool2D(w, s, p), (9, 8, 3)) for w, s, p in [(2, None, "VALID"), (3, 1, "SAME"),
                                                      (3, 2, 1), ((2, 3), None, "SAME")]],
    (GlobalAvgPool(), (5, 4, 3)),
    *[(Conv1D(4, k, stride=s, padding=p), (9, 3))
      for k, s, p in [(1, 1, "SAME"), (3, 2, "SAME"), (3, 1, "VALID"), (2, 3, (2, 0))]],
    *[(Conv2DTranspose(4, k, stride=s, padding=p), (4, 3, 3))
      for k, s, p in [(1, 2, "SAME"), (1, (3, 1), "VALID"), ((2, 3), 2, "VALID"),
                      ((2, 3), (3, 1), "SAME"), (3, 2, ((0, 1), (3, 0)))]],
    (serial(Conv2D(4, 3), Relu(), MaxPool2D(2), Flatten(), Dense(10), LogSoftmax()), (8, 8, 1)),
    (serial(Conv2DTranspose(4, 3, stride=2), Elu(), SumPool2D(2), GlobalAvgPool(), Dense(3)),
     (3, 3, 2)),
    (serial(Dense(8), Tanh(), serial(Dense(4), Relu()), Dense(2)), (3,)),
]



def _leaf(layer, **kwargs):
    """A stateless layer's forward as a plain ``(params, x) -> y``."""
    return lambda params, x: layer.apply(params, (), x, **kwargs)[0]

@pytest.mark.parametrize("batch", [1, 4])
@pytest.mark.parametrize(("layer", "shape"), SHAPE_CASES, ids=lambda c: str(c))
def test_init_predicts_apply_shape(layer, shape, batch, key):
    # Shapes only: init and apply are traced abstractly (`jax.eval_shape`), and the shapes a
    # trace gives are those the computation has; their values are tested below.
    def init(input_shape):
        predicted = {}

        def draw(k):
            predicted["shape"], params, state = layer.init(k, input_shape)
            return params, state

        params, state = jax.eval_shape(draw, key)
        return predicted["shape"], params, state

    out_shape, params, state = init((None, *shape))
    assert out_shape[0] is None
    x = jax.ShapeDtypeStruct((batch, *shape), jnp.float64)
    y, _ = jax.eval_shape(lambda p, s, x: layer.apply(p, s, x, key=jax.random.key(2),
                                                      train=True), params, state, x)
    assert y.shape == (batch, *out_shape[1:])
    y_eval, _ = jax.eval_shape(layer.apply, params, state, x)
    assert y_eval.shape == y.shape
    # A concrete batch size is carried through too.
    assert init((batch, *shape))[0] == y.shape


def test_conv_example_from_the_notes(key):
    # A 5x5x3 input with zero padding 1 (7x7x3 once padded), two 3x3x3 filters, stride 2.
    net = serial(Conv2D(2, 3, stride=2, padding=1))
    out_shape, params, _ = net.init(key, (None, 5, 5, 3))
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
        (SumPool2D(2), (28, 28), (14, 14)),
        (SumPool2D(3, 1, padding="SAME"), (5, 4), (5, 4)),
        (SumPool2D(3, 2, padding=1), (7, 6), (4, 3)),
        (Conv2DTranspose(1, 3, stride=2, padding="SAME"), (7, 6), (14, 12)),  # n s
        (Conv2DTranspose(1, 3, stride=2, padding="VALID"), (7, 6), (15, 13)),  # (n - 1) s + k
        (Conv2DTranspose(1, 4, stride=2, padding="VALID"), (3, 3), (8, 8)),
        (Conv2DTranspose(1, 1, stride=3, padding="VALID"), (3, 3), (9, 9)),  # k < s: n s
        (Conv2DTranspose(1, 3, stride=1, padding="SAME"), (5, 5), (5, 5)),
        # Explicit padding of the dilated input: (n - 1) s + 1 + lo + hi - k + 1.
        (Conv2DTranspose(1, 3, stride=2, padding=0), (4, 4), (5, 5)),
        (Conv2DTranspose(1, (3, 2), stride=(1, 3), padding=((2, 2), (0, 1))), (4, 4), (6, 10)),
    ],
)
def test_output_sizes(layer, in_hw, out_hw, key):
    assert layer.init(key, (None, *in_hw, 1))[0] == (None, *out_hw, 1)


@pytest.mark.parametrize(
    ("layer", "length", "out_length"),
    [
        (Conv1D(1, 3, padding="VALID"), 10, 8),
        (Conv1D(1, 3, stride=2, padding="SAME"), 7, 4),  # ceil(n / s)
        (Conv1D(1, 5, stride=2, padding=1), 9, 4),  # (9 + 2 - 5) // 2 + 1
        (Conv1D(1, 2, stride=3, padding=(0, 2)), 8, 3),
    ],
)
def test_conv1d_output_lengths(layer, length, out_length, key):
    assert layer.init(key, (None, length, 2))[0] == (None, out_length, 1)


def test_global_avg_pool_output_shape(key):
    assert GlobalAvgPool().init(key, (None, 7, 5, 3)) == ((None, 3), (), ())
    assert GlobalAvgPool().init(key, (2, 1, 1, 4))[0] == (2, 4)


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
        (serial(Conv1D(2, 3)), (None, 8, 8, 1), ["layer 0", "Conv1D", "rank 3", "(None, 8, 8, 1)"]),
        (serial(Conv1D(2, 5, padding="VALID")), (None, 3, 1),
         ["layer 0", "Conv1D", "kernel 5", "length 3"]),
        (serial(Flatten(), Conv2DTranspose(2)), (None, 4, 4, 1),
         ["layer 1", "Conv2DTranspose", "rank 4", "(None, 16)"]),
        (serial(Conv2DTranspose(2, 4, stride=2, padding=0)), (None, 1, 3, 1),
         ["layer 0", "Conv2DTranspose", "kernel (4, 4)", "(1, 5)"]),
        (serial(Dense(3), GlobalAvgPool()), (None, 5), ["layer 1", "GlobalAvgPool", "rank 4"]),
        (serial(SumPool2D(3)), (None, 2, 2, 1), ["layer 0", "SumPool2D", "window (3, 3)"]),
    ],
)
def test_shape_errors_name_layer_and_shapes(net, shape, fragments, key):
    with pytest.raises(ShapeError) as error:
        net.init(key, shape)
    for fragment in fragments:
        assert fragment in str(error.value)
    with pytest.raises(ShapeError):
        summary(net, shape)


def test_shape_errors_name_the_layer_as_its_name_reads(key):
    # AvgPool2D's errors named it without count_include_pad=False, and inside a net the
    # message then named it twice.
    layer = AvgPool2D(3, count_include_pad=False)
    with pytest.raises(ShapeError) as error:
        serial(layer).init(key, (None, 2, 2, 1))
    assert error.value.reason.startswith("window")
    with pytest.raises(ShapeError) as error:
        layer.init(key, (None, 2, 2, 1))
    assert str(error.value).startswith(f"{layer.name}: window")


@pytest.mark.parametrize(
    ("layer", "shape"),
    [*SHAPE_CASES, (BatchNorm(), (3,)), (LayerNorm(), (4,)), (GroupNorm(2), (3, 4))],
    ids=lambda c: str(c))
def test_degenerate_input_shapes_are_refused_naming_the_layer(layer, shape, key):
    # A 0 or a float among the sizes failed in an initializer (ZeroDivisionError) or in JAX
    # (TypeError), naming no layer, or passed through a parameter-free one.
    first = layer.children[0].name if layer.children else layer.name
    for size in (0, float(shape[-1])):
        bad = (None, *shape[:-1], size)
        with pytest.raises(ShapeError) as error:
            layer.init(key, bad)
        assert first in str(error.value)
        assert f"{bad} has {size!r} at axis {len(bad) - 1}" in str(error.value)


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


@pytest.mark.parametrize(
    ("make", "quoted"),
    [(lambda: Elu(0), "0"), (lambda: Elu(-1.5), "-1.5"), (lambda: Elu("1"), "'1'"),
     (lambda: Elu(float("nan")), "nan"), (lambda: Conv1D(0), "0"), (lambda: Conv1D(2, 0), "0"),
     (lambda: Conv1D(2, stride=(1, 2)), "(1, 2)"), (lambda: Conv1D(2, padding="FULL"), "'FULL'"),
     (lambda: Conv1D(2, padding=(1, -1)), "(1, -1)"), (lambda: Conv1D(2, padding=(1,)), "(1,)"),
     (lambda: Conv1D(2, w_init="glorious"), "glorious"),
     (lambda: Conv2DTranspose(0), "0"), (lambda: Conv2DTranspose(2, (3, 0)), "(3, 0)"),
     (lambda: Conv2DTranspose(2, stride=0), "0"),
     (lambda: Conv2DTranspose(2, padding="FULL"), "'FULL'"),
     # explicit pads are ints as given: int() truncated 1.5 and read "2" as 2
     (lambda: Conv2D(2, padding=((1.5, 1), (1, 1))), "((1.5, 1), (1, 1))"),
     (lambda: Conv2D(2, padding=((1, "2"), (1, 1))), "((1, '2'), (1, 1))"),
     (lambda: Conv2DTranspose(2, padding=((0, 0), (True, 0))), "((0, 0), (True, 0))"),
     (lambda: MaxPool2D(2, padding=((1, 0.5), (0, 0))), "((1, 0.5), (0, 0))"),
     (lambda: Conv1D(2, padding=(1.5, 0)), "(1.5, 0)"), (lambda: Conv2D(2, padding=1.5), "1.5"),
     (lambda: SumPool2D(0), "0"), (lambda: SumPool2D(2, padding="FULL"), "'FULL'"),
     # a window of padding alone (MaxPool2D's -inf, AvgPool2D's 0 / 0)
     (lambda: MaxPool2D(2, padding=2), "smaller than the window (2, 2)"),
     (lambda: AvgPool2D(3, padding=((0, 1), (3, 0))), "((0, 1), (3, 0))"),
     (lambda: AvgPool2D(2, count_include_pad="no"), "'no'"),
     (lambda: LeakyRelu(float("nan")), "nan"), (lambda: LeakyRelu("a"), "'a'"),
     (lambda: Gelu("yes"), "'yes'"), (lambda: Softmax(axis=1.5), "1.5"),
     (lambda: LogSoftmax(axis="x"), "'x'"), (lambda: Dropout("0.5"), "'0.5'")],
)
def test_new_layers_reject_bad_arguments_quoting_them(make, quoted):
    with pytest.raises(ValueError) as error:
        make()
    assert quoted in str(error.value)


@pytest.mark.parametrize(
    ("make", "option"),
    [(lambda bad: Dense(3, use_bias=bad), "use_bias"),
     (lambda bad: Dense(3, shared_bias=bad), "shared_bias"),
     (lambda bad: Conv2D(2, use_bias=bad), "use_bias"),
     (lambda bad: Conv1D(2, use_bias=bad), "use_bias"),
     (lambda bad: Conv2DTranspose(2, use_bias=bad), "use_bias"),
     (lambda bad: BatchNorm(use_scale=bad), "use_scale"),
     (lambda bad: BatchNorm(use_bias=bad), "use_bias"),
     (lambda bad: LayerNorm(use_scale=bad), "use_scale"),
     (lambda bad: GroupNorm(2, use_bias=bad), "use_bias"),
     (lambda bad: Gelu(approximate=bad), "approximate"),
     (lambda bad: AvgPool2D(2, count_include_pad=bad), "count_include_pad")],
)
def test_boolean_options_refuse_other_values(make, option):
    # The string "false" is truthy: it turned the option on.
    for bad in ("false", 0, None):
        with pytest.raises(ValueError, match=f"{option} must be True or False, got {bad!r}"):
            make(bad)
    make(np.bool_(False))


def test_train_must_be_a_bool():
    """``train="no"`` is truthy: BatchNorm took the batch's statistics and Dropout dropped,
    in a net too."""
    x = jnp.ones((4, 3))
    for net in (BatchNorm(), Dropout(0.5), jaxnn.serial(Dense(3), BatchNorm(), Dropout(0.5))):
        _, params, state = net.init(jax.random.key(0), (None, 3))
        for bad in ("no", 1, None):
            with pytest.raises(ValueError, match=f"train must be True or False, got {bad!r}"):
                net.apply(params, state, x, key=jax.random.key(1), train=bad)
            with pytest.raises(ValueError, match="train must be True or False"):
                jaxnn.manual.grad(net, jaxnn.mse, params, state, x, x, key=jax.random.key(1),
                                  train=bad)
        net.apply(params, state, x, key=jax.random.key(1), train=np.bool_(True))
        # jax.jit traces train too: the error says to make it static, and that works.
        with pytest.raises(ValueError, match="static_argnames='train'"):
            jax.jit(net.apply)(params, state, x, key=jax.random.key(1), train=True)
        jax.jit(net.apply, static_argnames="train")(params, state, x, key=jax.random.key(1),
                                                    train=True)


@pytest.mark.parametrize(
    ("make", "layer"),
    [(lambda bad: Dense(3, dtype=bad), "Dense"), (lambda bad: Conv2D(2, dtype=bad), "Conv2D"),
     (lambda bad: Conv1D(2, dtype=bad), "Conv1D"),
     (lambda bad: Conv2DTranspose(2, dtype=bad), "Conv2DTranspose"),
     (lambda bad: BatchNorm(dtype=bad), "BatchNorm"),
     (lambda bad: LayerNorm(dtype=bad), "LayerNorm"),
     (lambda bad: GroupNorm(2, dtype=bad), "GroupNorm")],
)
def test_dtype_options_refuse_other_than_floating(make, layer, key):
    # An integer dtype made BatchNorm's statistics integers, or failed in an initializer.
    for bad in ("int32", jnp.int8, "complex64", "float16x", True):
        with pytest.raises(ValueError, match=f"^{layer}: dtype must be a floating dtype.*"
                                             f"got {re.escape(repr(bad))}$"):
            make(bad)
    for good in (None, "float32", jnp.bfloat16):
        make(good)


def test_layer_is_a_namedtuple_of_three_functions(key):
    init, apply, backward = Dense(3)
    out_shape, params, state = init(key, (None, 2))
    assert out_shape == (None, 3)
    assert set(params) == {"w", "b"}
    assert state == ()
    y, new_state = apply(params, state, jnp.ones((1, 2)))
    assert y.shape == (1, 3)
    assert new_state == ()
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
    (SumPool2D(3, 2, padding="SAME"), (6, 6, 2)),
    (GlobalAvgPool(), (4, 3, 2)),
    (Conv1D(3, 3, stride=2), (7, 2)),
    (Conv2DTranspose(3, 3, stride=2), (3, 3, 2)),
    (serial(Conv2D(3, 3), Relu(), MaxPool2D(2), Flatten(), Dense(4)), (6, 6, 2)),
]


def _cast(tree, dtype):
    return jax.tree.map(lambda leaf: leaf.astype(dtype), tree)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize(("layer", "shape"), TRANSFORM_CASES, ids=lambda c: str(c))
def test_jit_vmap_grad(layer, shape, dtype, key):
    _, params, state = layer.init(key, (None, *shape))
    params = _cast(params, dtype)
    x = jax.random.normal(jax.random.key(1), (4, *shape), dtype)
    drop_key = jax.random.key(2)

    def forward(p, xs):
        return layer.apply(p, state, xs, key=drop_key, train=True)[0]

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
    y = _leaf(layer, key=key, train=True)((), x)
    dropped = float(jnp.mean(y == 0))
    assert 0.23 < dropped < 0.27
    np.testing.assert_allclose(y[y != 0], 1 / 0.75)
    np.testing.assert_array_equal(_leaf(layer)((), x), x)  # identity in evaluation
    with pytest.raises(ValueError, match="key"):
        _leaf(layer, train=True)((), x)


def test_dropout_of_integer_input_drops_at_its_rate(key):
    """In an int32 input's own dtype the keep probability 1 - 0.25 rounded to 1: nothing
    was dropped. The mask and scale are in the default float, as on the values as floats."""
    x = jnp.ones((200, 100), jnp.int32)
    y = _leaf(Dropout(0.25), key=key, train=True)((), x)
    np.testing.assert_array_equal(
        y, _leaf(Dropout(0.25), key=key, train=True)((), x.astype(jnp.float64)))
    assert 0.23 < float(jnp.mean(y == 0)) < 0.27


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("rate", [0.003, 0.01])
def test_dropout_of_16_bit_input_drops_at_its_rate(key, dtype, rate):
    """Drawn in bfloat16 (uniform steps of 1/128), a rate of 0.003 dropped nothing and 0.01
    dropped 0.0078: the mask is drawn in float32, as Flax draws it."""
    x = jnp.ones((1000, 1000), dtype)
    y = _leaf(Dropout(rate), key=key, train=True)((), x)
    assert y.dtype == dtype
    six_sigma = 6 * (rate * (1 - rate) / x.size) ** 0.5
    assert abs(float(jnp.mean(y == 0)) - rate) < six_sigma


def test_dropout_of_rate_zero_needs_no_key(key):
    # It drops nothing, so training needs no key (it demanded one), forward or rule.
    net = serial(Dense(3), Dropout(0.0), Tanh())
    _, params, state = net.init(key, (None, 4))
    x, y = jax.random.normal(key, (5, 4)), jnp.ones((5, 3))
    np.testing.assert_array_equal(net.apply(params, state, x, train=True)[0],
                                  net.apply(params, state, x)[0])
    manual = jaxnn.manual.grad(net, jaxnn.losses.mse, params, state, x, y, train=True)
    autodiff = jax.grad(lambda p: jaxnn.losses.mse(
        net.apply(p, state, x, train=True)[0], y))(params)
    jax.tree.map(lambda m, a: np.testing.assert_allclose(m, a, rtol=1e-12), manual, autodiff)


def test_dropout_rate_can_be_traced(key):
    x = jnp.ones((100, 100))

    @jax.jit
    def dropped_fraction(rate):
        return jnp.mean(_leaf(Dropout(rate), key=key, train=True)((), x) == 0)

    assert 0.45 < float(dropped_fraction(0.5)) < 0.55
    assert float(dropped_fraction(0.0)) == 0.0


def test_params_dtype_argument(key):
    _, params, _ = Dense(3, dtype=jnp.float32).init(key, (None, 2))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    _, params, _ = Conv2D(3, dtype=jnp.float64).init(key, (None, 4, 4, 1))
    assert {leaf.dtype for leaf in jax.tree.leaves(params)} == {jnp.dtype(jnp.float64)}


def _direct_conv(padding, hw):
    """Conv2D's forward as XLA's direct convolution (3x3, stride 1, with bias)."""
    pads = _spatial.explicit_pads(padding, hw, (3, 3), (1, 1))

    def apply(params, x):
        y = lax.conv_general_dilated(x, params["w"], (1, 1), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + params["b"][None, None, None, :]

    return apply


def test_winograd_takes_wide_inputs_and_sixteen_channels_on_large_images():
    def applies(hw, channels, window=(3, 3), strides=(1, 1), dtype=jnp.float32):
        x = jnp.zeros((1, *hw, channels), dtype)
        return _winograd.applies(window, strides, x)

    assert applies((8, 8), _winograd.MIN_CHANNELS)
    assert not applies((8, 8), _winograd.MIN_CHANNELS - 1)
    side, few = _winograd.LARGE_SIDE, _winograd.LARGE_MIN_CHANNELS
    assert applies((side, side + 3), few)
    assert not applies((side - 1, side + 3), few)
    assert not applies((side, side), few - 1)
    assert not applies((side, side), few, strides=(2, 2))
    assert not applies((side, side), few, window=(5, 5))
    assert not applies((side, side), few, dtype=jnp.bfloat16)


@pytest.mark.parametrize(
    "hw, extra, padding",
    [((9, 8), 0, "SAME"), ((9, 8), 5, "VALID"), ((4, 5), 0, ((0, 2), (2, 1))), ((3, 3), 1, 1),
     ((16, 17), _winograd.LARGE_MIN_CHANNELS - _winograd.MIN_CHANNELS, "SAME")],
)
def test_winograd_conv2d_equals_direct_convolution(hw, extra, padding, key):
    """On CPU a 3x3 stride-1 Conv2D with enough input channels runs as Winograd's F(2x2, 3x3):
    its output, its rule's gradients (called, or run by jax.grad) and JAX's own gradient of it
    equal the direct convolution's in float64."""
    channels = _winograd.MIN_CHANNELS + extra
    layer = Conv2D(5, 3, padding=padding)
    x = jax.random.normal(key, (3, *hw, channels))
    _, params, _ = layer.init(key, (None, *hw, channels))
    jaxpr = str(jax.make_jaxpr(_leaf(layer))(params, x))
    assert ("conv_general_dilated" in jaxpr) == (jax.default_backend() != "cpu")

    @jax.jit  # One program: op-by-op dispatch of F(2x2, 3x3)'s many small ops is slow.
    def outputs_and_gradients(params, x):
        y, rule_vjp = jax.vjp(_leaf(layer), params, x)  # jax.grad runs the rule on CPU
        _, autodiff = jax.vjp(_leaf(layer.reference), params, x)  # JAX through F(2x2, 3x3)
        want, direct = jax.vjp(_direct_conv(padding, hw), params, x)
        cotangent = jax.random.normal(jax.random.key(1), y.shape)
        rule = layer.backward(params, (), x, y, cotangent)
        return y, want, direct(cotangent), (rule_vjp(cotangent), autodiff(cotangent), rule)

    y, want, direct, all_grads = outputs_and_gradients(params, x)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    expected = jax.tree.leaves(direct)
    for grads in all_grads:
        for got, wanted in zip(jax.tree.leaves(grads), expected, strict=True):
            np.testing.assert_allclose(got, wanted, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("kernel", "stride", "padding", "channels"), [
    (3, 1, "SAME", _winograd.MIN_CHANNELS - 1), (3, 2, "SAME", _winograd.MIN_CHANNELS),
    (5, 1, "VALID", 3), ((3, 2), (2, 1), ((0, 2), (1, 1)), 2), (1, 1, "VALID", 4),
    (4, 3, 1, 1), (3, 1, ((2, 0), (0, 1)), 2), (1, 1, 1, 2)])
def test_other_convolutions_run_as_im2col_and_equal_lax_convolution(
        kernel, stride, padding, channels, key):
    """On CPU, Conv2D's other float convolutions run as a matmul over patches: the output,
    the rule's gradients (called, and run by jax.grad) and JAX's own gradient through the
    patches equal XLA's convolution and its gradient, in float64."""
    layer = Conv2D(3, kernel, stride=stride, padding=padding)
    x = jax.random.normal(key, (2, 7, 9, channels))
    _, params, _ = layer.init(key, (None, 7, 9, channels))
    params = {**params, "b": params["b"] + 0.5}
    assert ("conv_general_dilated" in str(jax.make_jaxpr(_leaf(layer))(params, x))) == (
        jax.default_backend() != "cpu")
    window, strides = _spatial.pair(kernel, "k", "test"), _spatial.pair(stride, "s", "test")
    pads = _spatial.explicit_pads(padding, (7, 9), window, strides)

    def reference(p, xx):
        y = lax.conv_general_dilated(xx, p["w"], strides, pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + p["b"][None, None, None, :]

    _assert_rule_equals_vjp(layer, params, x, reference)
    y, through_rule = jax.vjp(_leaf(layer), params, x)
    _, autodiff = jax.vjp(_leaf(layer.reference), params, x)
    _, want = jax.vjp(reference, params, x)
    dy = jax.random.normal(jax.random.key(7), y.shape)
    for got in (through_rule(dy), autodiff(dy)):
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want(dy)), strict=True):
            assert _relative_error(g, w) <= 1e-12


def test_bfloat16_convolutions_stay_direct(key):
    layer, channels = Conv2D(4, 3, dtype=jnp.bfloat16), _winograd.MIN_CHANNELS
    x = jnp.zeros((2, 6, 6, channels), jnp.bfloat16)
    _, params, _ = layer.init(key, (None, 6, 6, channels))
    assert "conv_general_dilated" in str(jax.make_jaxpr(_leaf(layer))(params, x))


def test_winograd_conv2d_float32_rounding(key):
    """In float32 the Winograd and the direct convolution agree up to rounding: 64 float32 eps
    of the output's scale (workload B's second convolution)."""
    layer = Conv2D(64, 3, dtype=jnp.float32)
    x = jax.random.normal(key, (4, 14, 14, 32), jnp.float32)
    _, params, _ = layer.init(key, (None, 14, 14, 32))
    got = jax.jit(_leaf(layer))(params, x)
    want = jax.jit(_direct_conv("SAME", (14, 14)))(params, x)
    assert_close(got, want)


def test_conv2d_under_vmap_equals_each_alone(key):
    """A sweep vmaps trials over parameter sets: jax.grad through the im2col rule (the first
    convolution, 2 channels in) and the Winograd rule (the second), vmapped, equals JAX's
    gradient of each set's plain forward."""
    channels = _winograd.MIN_CHANNELS
    net = serial(Conv2D(channels, 3), Relu(), Conv2D(4, 3), MaxPool2D(2), Flatten(), Dense(3))
    params = jax.vmap(lambda k: net.init(k, (None, 6, 6, 2))[1])(jax.random.split(key, 3))
    state = net.init(key, (None, 6, 6, 2))[2]
    x = jax.random.normal(jax.random.key(1), (4, 6, 6, 2))
    vmapped = jax.jit(jax.vmap(jax.grad(lambda p: jnp.sum(net.apply(p, state, x)[0] ** 2))))(
        params)
    reference_grad = jax.jit(jax.grad(
        lambda p: jnp.sum(net.reference.apply(p, state, x)[0] ** 2)))
    for trial in range(3):
        alone = jax.tree.map(lambda leaf, t=trial: leaf[t], params)
        want = reference_grad(alone)
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
    _, params, _ = layer.init(key, (None, 4))
    params = jax.tree.map(lambda leaf: leaf + 0.5, params)  # a nonzero bias

    def plain_apply(p, x):
        y = x @ p["w"]
        return y + jnp.broadcast_to(p["b"], (1, 6)) if "b" in p else y

    def loss(apply):
        return lambda p, x: jnp.sum(jnp.tanh(apply(p, x)) ** 2)

    fast, plain = loss(_leaf(layer)), loss(plain_apply)
    jaxpr = str(jax.make_jaxpr(jax.grad(fast))(params, x))
    assert ("optimization_barrier" in jaxpr) == (jax.default_backend() == "cpu")
    point = (params, x)
    direction = jax.tree.map(jnp.ones_like, point)

    def derivatives(f):
        @jax.jit  # One program: the Hessian's ops one by one are slow to dispatch.
        def all_of_them(point, direction):
            gradient = jax.grad(f, argnums=(0, 1))
            return (f(*point), gradient(*point), jax.jvp(f, point, direction)[1],
                    jax.jvp(gradient, point, direction)[1],
                    jax.hessian(f, argnums=(0, 1))(*point))

        return all_of_them(point, direction)

    assert_close(derivatives(fast), derivatives(plain))
    stacked = jax.tree.map(lambda leaf: jnp.stack([leaf, 2 * leaf, -leaf]), params)
    vmapped = jax.jit(jax.vmap(jax.grad(fast), in_axes=(0, None)))(stacked, x)
    plain_grad = jax.jit(jax.grad(plain))
    for trial in range(3):
        alone = plain_grad(jax.tree.map(lambda leaf, t=trial: leaf[t], stacked), x)
        assert_close(jax.tree.map(lambda leaf, t=trial: leaf[t], vmapped), alone)
    dy = jax.random.normal(jax.random.key(1), (5, 6), jnp.float32)
    rule, rule_dx = layer.backward(params, (), x, _leaf(layer)(params, x), dy)
    autodiff, autodiff_dx = jax.vjp(plain_apply, params, x)[1](dy)
    assert_close((rule, rule_dx), (autodiff, autodiff_dx))  # shapes included


def test_dense_apply_on_other_ranks_is_the_plain_matmul(key):
    """Dense's init wants (batch, features), but its apply broadcasts over leading axes as
    ``x @ w`` does; the CPU gradient layout only serves rank 2, so other ranks stay plain."""
    layer = Dense(3, dtype=jnp.float32)
    _, params, _ = layer.init(key, (None, 4))
    x = jax.random.normal(key, (2, 5, 4), jnp.float32)
    got = jax.grad(lambda p: jnp.sum(_leaf(layer)(p, x) ** 2))(params)
    want = jax.grad(lambda p: jnp.sum((x @ p["w"] + p["b"][None, None, :]) ** 2))(params)
    assert_close(got, want)


# --- the newer layers against plain references ---------------------------------------------


def _relative_error(got, want):
    return float(jnp.max(jnp.abs(got - want))) / max(float(jnp.max(jnp.abs(want))), 1e-300)


def _assert_rule_equals_vjp(layer, params, x, reference, rtol=1e-12):
    """The layer's forward equals ``reference(params, x)`` and its manual rule equals
    ``jax.vjp`` of the reference, to ``rtol`` of each leaf's scale."""
    y = _leaf(layer)(params, x)
    want, vjp = jax.vjp(reference, params, x)
    assert y.shape == want.shape
    assert _relative_error(y, want) <= 1e-13
    dy = jax.random.normal(jax.random.key(7), y.shape)
    got = layer.backward(params, (), x, y, dy)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(vjp(dy)), strict=True):
        assert g.shape == w.shape
        assert _relative_error(g, w) <= rtol


@pytest.mark.parametrize(
    ("layer", "reference", "slope_at_zero"),
    [(Elu(), jax.nn.elu, 1.0), (Elu(0.5), lambda z: jax.nn.elu(z, 0.5), 0.5),
     (Selu(), jax.nn.selu, 1.0507009873554805 * 1.6732632423543772), (Silu(), jax.nn.silu, 0.5)],
    ids=lambda c: getattr(c, "name", ""),
)
def test_new_activations_equal_jax_nn(layer, reference, slope_at_zero):
    x = jnp.concatenate([jnp.linspace(-30.0, 30.0, 601), jnp.array([0.0, -0.0, 1e-300, -800.0])])
    y = _leaf(layer)((), x)
    np.testing.assert_array_equal(y, reference(x))
    dy = jnp.cos(3 * x) + 2
    want = jax.vjp(reference, x)[1](dy)[0]
    _, dx = layer.backward((), (), x, y, dy)
    if layer.name.startswith("Elu"):  # The same formula as jax.grad's, bit for bit.
        np.testing.assert_array_equal(dx, want)
    np.testing.assert_allclose(dx, want, rtol=0, atol=1e-15 * float(jnp.max(jnp.abs(want))))
    _, at_zero = layer.backward((), (), jnp.zeros(2), _leaf(layer)((), jnp.zeros(2)), jnp.ones(2))
    assert float(at_zero[0]) == float(jax.grad(reference)(0.0)) == pytest.approx(slope_at_zero)


def _numpy_sum_pool(x, window, strides, pads):
    x = np.pad(np.asarray(x), ((0, 0), *pads, (0, 0)))
    (kh, kw), (sh, sw) = window, strides
    oh, ow = (x.shape[1] - kh) // sh + 1, (x.shape[2] - kw) // sw + 1
    y = np.zeros((x.shape[0], oh, ow, x.shape[3]))
    for a in range(oh):
        for b in range(ow):
            y[:, a, b] = x[:, a * sh:a * sh + kh, b * sw:b * sw + kw].sum(axis=(1, 2))
    return y


@pytest.mark.parametrize(("window", "stride", "padding"),
                         [(2, None, "VALID"), (3, 2, "SAME"), ((2, 3), 1, 1)])
def test_sum_pool_equals_numpy(window, stride, padding, key):
    """(2, 2) windows tile the 6x4 input (the rule's interleaving path); the others overlap
    or leave cells out."""
    layer = SumPool2D(window, stride, padding)
    x = jax.random.normal(key, (2, 6, 4, 3))
    window = _spatial.pair(window, "window", "test")
    strides = _spatial.pair(window if stride is None else stride, "stride", "test")
    pads = _spatial.explicit_pads(_spatial.check_padding(padding, "test"), (6, 4), window,
                                  strides)
    np.testing.assert_allclose(_leaf(layer)((), x), _numpy_sum_pool(x, window, strides, pads),
                               rtol=1e-13, atol=1e-13)
    # The rule against jax.grad of lax.reduce_window's sum.
    _assert_rule_equals_vjp(layer, (), x, lambda p, xx: lax.reduce_window(
        xx, 0.0, lax.add, (1, *window, 1), (1, *strides, 1), ((0, 0), *pads, (0, 0))))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_max_pool_rule_routes_every_window_when_xla_computes_its_input_twice(dtype):
    """In one compiled program, XLA computed a transposed convolution + GroupNorm's output
    once into the pool's forward and again, to other bits, into its rule, which compared the
    rule's copy with the forward's maximum: 27 (float64) / 49 (float32) windows matched no
    cell and lost their gradient (CPU, AVX-512). Every window's dy must arrive, where
    jax.grad of lax.reduce_window sends it."""
    feed = jaxnn.serial(jaxnn.Conv2DTranspose(4, 3, stride=2, padding=1), jaxnn.GroupNorm(2))
    pool = MaxPool2D(2)
    _, params, state = feed.init(jax.random.key(0), (None, 8, 8, 1))
    params = jax.tree.map(lambda a: a.astype(dtype), params)
    x = jax.random.normal(jax.random.key(1), (16, 8, 8, 1), dtype)
    dy = jax.random.normal(jax.random.key(3), (16, 7, 7, 4), dtype)  # (15 x 15 pooled)

    @jax.jit
    def rule_and_vjp(params, x, dy):
        a = feed.apply(params, state, x)[0]
        y = pool.apply((), (), a)[0]
        _, dx = pool.backward((), (), a, y, dy)
        return dx, jax.vjp(lambda z: pool.reference.apply((), (), z)[0], a)[1](dy)[0]

    dx, want = rule_and_vjp(params, x, dy)
    per_window = np.asarray(dx)[:, :14, :14].reshape(16, 7, 2, 7, 2, 4).sum(axis=(2, 4))
    np.testing.assert_allclose(per_window, dy, rtol=0, atol=0)  # one cell takes it whole
    np.testing.assert_array_equal(dx, want)


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.uint8, jnp.int8])
def test_max_pool_of_integers_pads_with_the_least_value(dtype):
    """Padded cells hold the dtype's least value (-inf has no integer), so they never win,
    and the output keeps the input's dtype."""
    x = jnp.asarray(np.random.default_rng(0).integers(
        jnp.iinfo(dtype).min, jnp.iinfo(dtype).max, (2, 5, 5, 3), endpoint=True), dtype)
    y = _leaf(MaxPool2D(3, 2, "SAME"))((), x)
    padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)),
                    constant_values=jnp.iinfo(dtype).min)
    want = np.stack([np.stack([padded[:, 2 * a:2 * a + 3, 2 * b:2 * b + 3].max(axis=(1, 2))
                               for b in range(3)], 1) for a in range(3)], 1)
    assert y.dtype == dtype
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype", [jnp.uint8, jnp.int8, jnp.int32])
@pytest.mark.parametrize("pool", [AvgPool2D(2), AvgPool2D(2, 1, 1, count_include_pad=False),
                                  SumPool2D(2), GlobalAvgPool()], ids=str)
def test_sum_and_average_pools_of_integers_do_not_wrap_around(dtype, pool):
    """The window sum was taken in the input's dtype: a 2x2 average of uint8 200s was 8
    (800 mod 256, / 4). Sums come as `jnp.sum` gives them (integers widened), averages as
    `jnp.mean` does (as floats), as `GlobalAvgPool` always did."""
    info = jnp.iinfo(dtype)
    x = np.random.default_rng(0).integers(max(info.min, -10**6), min(info.max, 10**6),
                                          (2, 4, 4, 3), endpoint=True)
    y = _leaf(pool)((), jnp.asarray(x, dtype))
    want = _leaf(pool)((), jnp.asarray(x, jnp.float64))
    assert y.dtype == jax.eval_shape(jnp.sum if "Sum" in str(pool) else jnp.mean,
                                     jax.ShapeDtypeStruct((), dtype)).dtype
    np.testing.assert_allclose(np.asarray(y, np.float64), want, rtol=1e-12)


def test_global_avg_pool_equals_numpy_mean(key):
    layer = GlobalAvgPool()
    x = jax.random.normal(key, (3, 4, 5, 2))
    np.testing.assert_allclose(_leaf(layer)((), x), np.asarray(x).mean(axis=(1, 2)), rtol=1e-14)
    dy = jax.random.normal(jax.random.key(1), (3, 2))
    _, dx = layer.backward((), (), x, None, dy)
    np.testing.assert_allclose(dx, np.broadcast_to(np.asarray(dy)[:, None, None, :] / 20,
                                                   x.shape), rtol=1e-15)
    _assert_rule_equals_vjp(layer, (), x, lambda p, xx: jnp.mean(xx, axis=(1, 2)))


@pytest.mark.parametrize(("kernel", "stride", "padding"),
                         [(3, 1, "SAME"), (2, 3, (1, 2)), (4, 2, 1)])
def test_conv1d_equals_lax_convolution(kernel, stride, padding, key):
    layer = Conv1D(3, kernel, stride=stride, padding=padding)
    _, params, _ = layer.init(key, (None, 9, 2))
    assert params["w"].shape == (kernel, 2, 3)
    params = {**params, "b": params["b"] + 0.5}
    pads = padding if isinstance(padding, str) else (
        [(padding, padding)] if isinstance(padding, int) else [padding])

    def reference(p, x):
        y = lax.conv_general_dilated(x, p["w"], (stride,), pads,
                                     dimension_numbers=("NHC", "HIO", "NHC"))
        return y + p["b"][None, None, :]

    _assert_rule_equals_vjp(layer, params, jax.random.normal(key, (2, 9, 2)), reference)


@pytest.mark.parametrize(
    ("kernel", "stride", "padding"),
    [(3, 2, "SAME"), ((2, 3), (2, 1), "VALID"), (1, 3, "VALID"), (2, 2, ((0, 2), (3, 1)))],
)
def test_conv2d_transpose_equals_lax_conv_transpose(kernel, stride, padding, key):
    """The forward is ``lax.conv_transpose`` (Flax's ConvTranspose, kernel not flipped) plus
    the bias; the rule, and ``jax.grad`` through it on CPU, equal JAX's gradient of that.
    The explicit padding 3 > k - 1 makes the rule crop ``dy``."""
    layer = Conv2DTranspose(3, kernel, stride=stride, padding=padding)
    x = jax.random.normal(key, (2, 3, 4, 2))
    _, params, _ = layer.init(key, (None, 3, 4, 2))
    params = {**params, "b": params["b"] + 0.5}
    strides = _spatial.pair(stride, "stride", "test")
    pads = padding if isinstance(padding, str) else (
        ((padding, padding),) * 2 if isinstance(padding, int) else padding)

    def reference(p, xx):
        y = lax.conv_transpose(xx, p["w"], strides, pads,
                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + p["b"][None, None, None, :]

    _assert_rule_equals_vjp(layer, params, x, reference)
    y, through_rule = jax.vjp(_leaf(layer), params, x)
    dy = jax.random.normal(jax.random.key(7), y.shape)
    for got, want in zip(jax.tree.leaves(through_rule(dy)),
                         jax.tree.leaves(jax.vjp(reference, params, x)[1](dy)), strict=True):
        assert _relative_error(got, want) <= 1e-12


@pytest.mark.parametrize("make", [lambda: Conv2D(2, 3, dtype=jnp.float32),
                                  lambda: Conv1D(2, 3, dtype=jnp.float32),
                                  lambda: MaxPool2D(2)])
def test_gradients_come_in_the_params_and_inputs_dtypes(make, key):
    """float32 params on a float64 input: the CPU rule's promoted float64 cotangents are
    given back in float32, as autodiff of the plain forward gives them (an optimizer's state
    would otherwise change dtype inside a training loop)."""
    layer = make()
    shape = (None, 6, 2) if layer.name.startswith("Conv1D") else (None, 4, 4, 2)
    _, params, state = layer.init(key, shape)
    x = jnp.ones((2, *shape[1:]), jnp.float64)

    def dtypes(apply):
        grads = jax.grad(lambda p, x: apply(p, state, x)[0].sum(), argnums=(0, 1))(params, x)
        return jax.tree.map(lambda g: g.dtype, grads)

    with jax.numpy_dtype_promotion("standard"):  # the mix is the point
        assert dtypes(layer.apply) == dtypes(layer.reference.apply)
        y = jnp.zeros_like(layer.apply(params, state, x)[0])
        manual = jaxnn.manual.grad(layer, jaxnn.losses.mse, params, state, x, y)
    assert jax.tree.map(lambda g: g.dtype, manual) == jax.tree.map(lambda p: p.dtype, params)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.int32])
@pytest.mark.parametrize(("make", "shape"), [(lambda: Conv2D(2, 3), (5, 5, 2)),
                                             (lambda: Conv1D(2, 3), (6, 2)),
                                             (lambda: Conv2DTranspose(2, 3, stride=2), (3, 3, 2))])
def test_convolutions_promote_their_input_as_dense_does(make, shape, dtype, key):
    """A bfloat16 or integer input on float32 filters computes in float32, as Dense's matmul
    does (XLA's convolution takes one dtype: it raised)."""
    layer = make()
    _, params, state = layer.init(key, (None, *shape))
    params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
    x = jnp.arange(2 * math.prod(shape)).reshape(2, *shape) % 5
    with jax.numpy_dtype_promotion("standard"):
        y = layer.apply(params, state, x.astype(dtype))[0]
        grads = jax.grad(lambda p: layer.apply(p, state, x.astype(dtype))[0].sum())(params)
    np.testing.assert_array_equal(y, layer.apply(params, state, x.astype(jnp.float32))[0])
    assert jax.tree.map(lambda g: g.dtype, grads) == jax.tree.map(lambda p: p.dtype, params)


def test_numpy_integers_are_integer_arguments():
    """Sizes and paddings from numpy (``np.int64``, e.g. read from an array or a table) are
    ints, as in Flax and PyTorch; a numpy bool is no size."""
    layers = [Dense(np.int64(3)), Conv2D(2, np.int64(3)), Conv1D(np.int32(2), np.int64(3)),
              GroupNorm(np.int64(2)), FanOut(np.int64(2)), MaxPool2D((np.int64(2), 2))]
    assert [layer.name.split(",")[0] for layer in layers] == [
        "Dense(3)", "Conv2D(2", "Conv1D(2", "GroupNorm(2)", "FanOut(2)", "MaxPool2D((2"]
    paddings = [Conv2D(2, padding=np.int64(1)), Conv2D(2, padding=((np.int64(1), 0), (0, 2))),
                Conv1D(2, padding=(np.int32(1), 2)), SumPool2D(2, padding=np.int64(1))]
    assert [layer.name.split("padding=")[1] for layer in paddings] == [
        "1)", "((1, 0), (0, 2)))", "(1, 2))", "1)"]
    with pytest.raises(ValueError, match="window must be a positive int"):
        MaxPool2D(np.bool_(True))
    # A convolution's numpy features reached its output shape as np.int64 (Dense's did not).
    for layer in (Conv2D(np.int64(2)), Conv2DTranspose(np.int64(2))):
        shape = layer.init(jax.random.key(0), (None, 3, 3, 1))[0]
        assert shape == (None, 3, 3, 2) and type(shape[-1]) is int


def test_an_empty_batch_flattens_and_a_listed_shape_names_the_residual():
    """Flatten's ``reshape(n, -1)`` failed on a batch of 0 (a ZeroDivisionError, not naming
    the layer), which its init accepts; a Residual's mismatch given its input shape as a list
    blamed a ``parallel`` the user never wrote."""
    net = serial(Conv2D(2), Flatten(), Dense(2))
    params, state = net.init(jax.random.key(0), (0, 4, 4, 1))[1:]
    assert net.apply(params, state, jnp.zeros((0, 4, 4, 1)))[0].shape == (0, 2)
    with pytest.raises(ShapeError, match=r"Residual\(Dense\(2\)\): adds f\(x\) of shape "
                                         r"\(None, 2\) and x of shape \(None, 3\)"):
        Residual(Dense(2)).init(jax.random.key(0), [None, 3])


APPLIED_WRONG = [  # (layer, init shape, applied input, what the error says)
    (Conv2D(2, 5, padding="VALID"), (None, 8, 8, 1), (1, 2, 2, 1),
     "window (5, 5) does not fit the padded input (2, 2)"),
    (Conv2D(2, 3), (None, 8, 8, 1), (8, 8, 1),
     "expects input of rank 4 NHWC (batch, height, width, channels), got shape (8, 8, 1); a "
     "per-example jax.vmap takes the batch axis away"),
    (Conv2D(2, 3), (None, 8, 8, 1), (2, 8, 8, 3), "made for inputs of 1 channels"),
    (Conv1D(2, 3), (None, 8, 4), (2, 8, 5), "made for inputs of 4 channels"),
    (Conv2DTranspose(2, 3), (None, 4, 4, 2), (4, 4, 2), "expects input of rank 4"),
    (MaxPool2D(2), (None, 4, 4, 1), (4, 4, 1), "expects input of rank 4"),
    (AvgPool2D(2), (None, 4, 4, 1), (1, 1, 1, 1), "window (2, 2) does not fit"),
    (GlobalAvgPool(), (None, 4, 4, 1), (4, 4, 1), "expects input of rank 4"),
    (Dense(3), (None, 4), (2, 5), "made for inputs of 4 channels"),
    (BatchNorm(), (None, 4), (2, 5), "made for inputs of 4 channels (the last axis), got shape "
     "(2, 5)"),
    (LayerNorm(), (None, 4), (2, 5), "made for inputs of 4 channels"),
    (GroupNorm(2), (None, 4, 4, 4), (2, 4, 4, 6), "made for inputs of 4 channels"),
]


@pytest.mark.parametrize(("layer", "shape", "given", "said"), APPLIED_WRONG,
                         ids=[f"{case[0].name}-{case[2]}" for case in APPLIED_WRONG])
def test_a_layer_applied_to_an_input_its_init_refuses_names_itself(key, layer, shape, given,
                                                                    said):
    """Applied alone, each failed deep inside JAX ("slice limit_indices must have every
    element be nonnegative", "jnp.pad: pad_width with nd=3", "mul got incompatible shapes"),
    naming neither the layer nor its input."""
    _, params, state = layer.init(key, shape)
    with pytest.raises(ShapeError, match=re.escape(said)) as error:
        layer.apply(params, state, jnp.ones(given), train=True)
    assert layer.name in str(error.value)


def test_a_layer_given_no_key_says_which_and_why(key):
    """Dense.init(None, ...) said "unexpected PRNG key type NoneType"; Dropout's apply with
    key=0 "invalid PRNG key data"."""
    for layer in (Dense(2), Conv2D(2, 3), Conv1D(2, 3), Conv2DTranspose(2, 3)):
        with pytest.raises(ValueError, match=re.escape(
                f"{layer.name}: init needs a PRNG key such as jax.random.key(0), got None")):
            layer.init(None, (None, 4, 4, 2)[:4 if "2D" in layer.name else
                                               3 if "1D" in layer.name else 2])
    with pytest.raises(ValueError, match=re.escape(
            "Dropout(0.5): apply(..., train=True) needs a PRNG key such as jax.random.key(0), "
            "got 0")):
        Dropout(0.5).apply((), (), jnp.ones((2, 3)), key=0, train=True)
    raw = jax.random.key_data(key)  # raw uint32 keys still serve
    assert Dense(2).init(raw, (None, 3))[0] == (None, 2)


def test_max_pooling_a_mask_is_any():
    """A boolean mask failed in max pooling's padding value ("Invalid integer data type")."""
    mask = jnp.zeros((1, 4, 4, 1), bool).at[0, 1, 2, 0].set(True)
    pooled = MaxPool2D(2, padding="SAME").apply((), (), mask)[0]
    assert pooled.dtype == jnp.bool_
    np.testing.assert_array_equal(pooled[0, :, :, 0], [[False, True], [False, False]])
