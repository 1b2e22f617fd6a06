"""Branches: parallel, FanOut, FanInSum, FanInConcat and Residual -- shapes, forward values,
manual rules against jax.grad (float64, 1e-10), planted wrong rules, and the summary."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import (
    AvgPool2D,
    BatchNorm,
    Conv2D,
    Dense,
    Dropout,
    FanInConcat,
    FanInSum,
    FanOut,
    Flatten,
    Identity,
    MaxPool2D,
    Relu,
    Residual,
    ShapeError,
    Softmax,
    Tanh,
    losses,
    manual,
    parallel,
    serial,
    summary,
)
from jaxnn.summary import rows

RTOL = 1e-10


def _conv(features, **kwargs):
    return Conv2D(features, 3, use_bias=False, **kwargs)


def _resnet_block(features, stride=1):
    body = [_conv(features, stride=stride), BatchNorm(), Relu(), _conv(features), BatchNorm()]
    if stride == 1:
        return Residual(*body)
    return Residual(*body, shortcut=serial(Conv2D(features, 1, stride=stride, use_bias=False),
                                           BatchNorm()))


NETS = {
    "residual_cnn_batchnorm": (serial(
        _conv(4), BatchNorm(), Relu(), _resnet_block(4), Relu(), _resnet_block(6, stride=2),
        Relu(), Flatten(), Dense(3)), (6, 6, 2)),
    "fanout_concat": (serial(
        Dense(5), FanOut(3), parallel(Dense(4), serial(Tanh(), Dense(2)), Relu()),
        FanInConcat(), Dense(3)), (4,)),
    "nested_parallel": (serial(
        FanOut(2), parallel(serial(Dense(4), FanOut(2), parallel(Tanh(), Dense(4)), FanInSum()),
                            Dense(4)),
        FanInConcat(axis=1), Tanh(), Dense(3)), (5,)),
    "inception_like_cnn": (serial(
        Conv2D(3, 3), FanOut(3), parallel(Conv2D(2, 1), Conv2D(2, 3), MaxPool2D(3, 1, "SAME")),
        FanInConcat(axis=-1), AvgPool2D(2), Flatten(), Dense(3)), (6, 6, 2)),
}


@pytest.mark.parametrize("batch", [1, 7])
@pytest.mark.parametrize("name", list(NETS))
def test_manual_gradient_equals_jax_grad(name, batch, key):
    net, shape = NETS[name]
    x = jax.random.normal(key, (batch, *shape))
    y = jnp.arange(batch) % 3
    _, params, state = net.init(jax.random.key(1), (None, *shape))
    loss = losses.softmax_cross_entropy
    got = jax.jit(lambda p: manual.grad(net, loss, p, state, x, y, train=True))(params)
    want = jax.jit(jax.grad(
        lambda p: loss(net.reference.apply(p, state, x, train=True)[0], y)))(params)
    leaves = jax.tree.leaves(want)
    whole = max(float(jnp.max(jnp.abs(w))) for w in leaves)
    for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0], leaves, strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype == jnp.float64, path
        # A bias before a BatchNorm has a zero gradient: its noise is measured against the
        # whole gradient (there is none here: the convolutions before BatchNorm have no bias).
        scale = max(float(jnp.max(jnp.abs(w))), whole * 1e-8)
        assert float(jnp.max(jnp.abs(g - w))) <= RTOL * scale, path


def test_check_passes_on_branching_nets(key):
    """manual.check walks the recorded forward through tuple activations, layer by layer
    (the MLP-shaped nets: the CNNs' gradients are compared above)."""
    for net, shape in (NETS["fanout_concat"], NETS["nested_parallel"]):
        x = jax.random.normal(key, (7, *shape))
        _, params, state = net.init(jax.random.key(1), (None, *shape))
        report = manual.check(net, losses.softmax_cross_entropy, params, state, x,
                              jnp.arange(7) % 3, train=True, verbose=False)
        assert report.worst_autodiff_rel < 1e-10


def test_planted_wrong_fanout_rule_is_named(key):
    """A fork whose rule keeps only its first branch's delta instead of the sum."""
    fork = FanOut(2)
    wrong = fork._replace(backward=lambda p, s, x, y, dy, **kw: ((), dy[0]))
    net = serial(Dense(4), wrong, parallel(Dense(3), Dense(3)), FanInSum())
    _, params, state = net.init(key, (None, 5))
    x = jax.random.normal(key, (7, 5))
    with pytest.raises(manual.GradientCheckError) as error:
        manual.check(net, losses.softmax_cross_entropy, params, state, x, jnp.arange(7) % 3,
                     verbose=False)
    assert "layer rule layer 1 (FanOut(2))" in str(error.value)
    assert "leaf [0]['w'] of layer 0 (Dense(4))" in str(error.value)


def test_fan_rules_are_sum_copy_and_split(key):
    x = jax.random.normal(key, (3, 4))
    dys = (jnp.ones((3, 4)), 2 * jnp.ones((3, 4)))
    _, dx = FanOut(2).backward((), (), x, (x, x), dys)
    np.testing.assert_array_equal(dx, 3 * jnp.ones((3, 4)))
    _, dxs = FanInSum().backward((), (), (x, x), 2 * x, x)
    assert len(dxs) == 2 and all(d is x for d in dxs)
    parts = (x, jnp.zeros((3, 2)))
    y, _ = FanInConcat().apply((), (), parts)
    _, (da, db) = FanInConcat().backward((), (), parts, y, y)
    np.testing.assert_array_equal(da, x)
    np.testing.assert_array_equal(db, jnp.zeros((3, 2)))


def test_residual_is_x_plus_f_of_x(key):
    block = Residual(Dense(4), Tanh())
    _, params, state = block.init(key, (None, 4))
    x = jax.random.normal(key, (5, 4))
    body = params[1][0]
    want = x + jnp.tanh(x @ body[0]["w"] + body[0]["b"][None, :])
    np.testing.assert_allclose(block.apply(params, state, x)[0], want, rtol=1e-14)
    projected = Residual(Dense(3), shortcut=Dense(3, use_bias=False))
    _, params, state = projected.init(key, (None, 4))
    shortcut_w = params[1][1]["w"]
    body = params[1][0][0]
    np.testing.assert_allclose(projected.apply(params, state, x)[0],
                               x @ body["w"] + body["b"][None, :] + x @ shortcut_w, rtol=1e-14)


@pytest.mark.parametrize(
    ("net", "shape", "fragments"),
    [
        # The Residual is named, not the FanInSum inside it that the user never wrote.
        (serial(Dense(3), Residual(Dense(4))), (None, 5),
         ["layer 1 (Residual(Dense(4))): adds f(x) of shape (None, 4) and x of shape "
          "(None, 3); they must match; give shortcut= a projection"]),
        (serial(Dense(3), Residual(Dense(4), shortcut=Dense(5))), (None, 5),
         ["layer 1 (Residual(Dense(4); shortcut=Dense(5))): adds f(x) of shape (None, 4) "
          "and shortcut(x) of shape (None, 5); they must match"]),
        (serial(Dense(3), Residual(Conv2D(2))), (None, 5), ["layer 1.1.0.0 (Conv2D(2, "]),
        (serial(Dense(3), Residual(Dense(4), BatchNorm())).reference, (None, 5),  # the twin
         ["layer 1 (Residual(Dense(4), BatchNorm(momentum=0.99))): adds f(x) of shape"]),
        (serial(Dense(3), FanInSum()), (None, 5), ["layer 1 (FanInSum())", "tuple of branches"]),
        (serial(FanOut(2), parallel(Dense(2), Dense(2), Dense(2))), (None, 5),
         ["layer 1", "3 branches, got 2"]),
        (serial(FanOut(2), Dense(2)), (None, 5), ["layer 1 (Dense(2))", "FanInSum"]),
        (serial(FanOut(2), parallel(Conv2D(2, 3), MaxPool2D(2)), FanInConcat()),
         (None, 3, 3, 2), ["layer 2 (FanInConcat(axis=-1))", "equal but along axis -1"]),
        (serial(FanOut(2), parallel(Flatten(), Relu()), FanInConcat()), (None, 3, 3, 2),
         ["layer 2 (FanInConcat(axis=-1))", "one rank"]),
        (serial(FanOut(2), FanInConcat(axis=0)), (None, 5), ["batch axis"]),
        (serial(Dense(2), parallel(Dense(2))), (None, 5), ["layer 1 (parallel(Dense(2)))",
                                                             "single shape"]),
        # Layers of one input refuse branches at init (apply would fail on the tuple).
        *[(serial(FanOut(2), layer), (None, 5), [f"layer 1 ({layer.name})", "2 branches",
                                                 "join them first"])
          for layer in (Relu(), Identity(), Softmax(), Flatten(), Dropout(0.5))],
    ],
)
def test_branch_shape_errors_name_the_layer(net, shape, fragments, key):
    with pytest.raises(ShapeError) as error:
        net.init(key, shape)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_apply_on_inputs_of_other_shapes_names_the_layer(key):
    """``apply`` refuses the input its params were not made for, naming the layer (JAX said
    "dot_general requires contracting dimensions to have the same shape"), with a note
    naming its place and input; FanInSum does not broadcast branches."""
    net = serial(Dense(16), Relu(), Residual(Dense(16)), Dense(10))
    _, params, state = net.init(key, (None, 8))
    with pytest.raises(ShapeError, match=re.escape(
            "Dense(16): its params were made for inputs of 8 channels (the last axis), got "
            "shape (4, 9)")) as error:
        net.apply(params, state, jnp.ones((4, 9)))
    assert "jaxnn: raised in layer 0 (Dense(16)) with an input of shape (4, 9)" in \
        error.value.__notes__
    _, narrow, _ = serial(Dense(16), Relu(), Residual(Dense(16)), Dense(10)).init(key, (None, 5))
    with pytest.raises(ShapeError, match="made for inputs of 5 channels") as error:
        net.apply(narrow, state, jnp.ones((4, 8)))
    assert any("layer 0 (Dense(16))" in note for note in error.value.__notes__)
    with pytest.raises(ShapeError, match=r"equal shape, got \(\(2, 4\), \(1, 4\)\)"):
        FanInSum().apply((), (), (jnp.ones((2, 4)), jnp.ones((1, 4))))
    # parallel takes exactly its branches: an array's rows or extra inputs are not branches.
    both = parallel(Dense(2), Dense(2))
    _, params, state = both.init(key, ((None, 3), (None, 3)))
    x = jnp.ones((5, 3))
    for wrong, said in ((x, "one input of shape (5, 3)"), ((x,) * 3, "3 inputs"),
                        ((x,), "1 inputs")):
        with pytest.raises(ShapeError, match=re.escape(f"has 2 branches, got {said}")):
            both.apply(params, state, wrong)


def test_apply_with_state_or_params_of_another_network_says_so(key):
    # () as the state of a net with BatchNorm raised IndexError from inside serial.
    net = serial(Dense(4), Residual(Dense(4), BatchNorm()))
    _, params, state = net.init(key, (None, 3))
    x = jnp.ones((2, 3))
    expected = "takes a tuple of {} entries (one per child layer, as its init returns them)"
    for wrong_params, wrong_state, said in (
            (params, (), "serial(Dense(4), Residual(Dense(4), BatchNorm(momentum=0.99))): "
             "the state does not match the network, which " + expected.format(2) + "; got ()"),
            (params, (state[0], state[1][:2]), "layer 1 (Residual(Dense(4), BatchNorm("
             "momentum=0.99))): the state does not match the network, which "
             + expected.format(3) + "; got a tuple of 2 entries"),
            (params[:1], state, "the params do not match the network, which "
             + expected.format(2) + "; got a tuple of 1 entries")):
        with pytest.raises(ValueError, match=re.escape(said)):
            net.apply(wrong_params, wrong_state, x, train=True)
        with pytest.raises(ValueError, match=re.escape(said)):
            manual.grad(net, losses.mse, wrong_params, wrong_state, x, jnp.ones((2, 4)))


def test_combinators_reject_non_layers():
    with pytest.raises(TypeError, match=r"parallel: argument 1 is not a Layer.*Relu\(\)"):
        parallel(Dense(2), Relu)
    with pytest.raises(TypeError, match="Residual: argument 0"):
        Residual(3)
    with pytest.raises(TypeError, match="Residual: shortcut is not a Layer: 3"):
        Residual(Dense(2), shortcut=3)
    assert FanInConcat(np.int64(1)).name == "FanInConcat(axis=1)"  # numpy ints, as layers take
    with pytest.raises(ValueError, match="FanOut: num"):
        FanOut(0)


def test_summary_shows_branches_indented():
    net, shape = NETS["residual_cnn_batchnorm"]
    text = summary(net, (None, *shape))
    lines = text.splitlines()
    heading = next(line for line in lines if line.startswith("3 ") and "Residual" in line)
    assert "(None, 6, 6, 4)" in heading
    fork = next(line for line in lines if line.startswith("3.0 "))
    assert "  FanOut(2)" in fork and "(None, 6, 6, 4), (None, 6, 6, 4)" in fork
    assert any(line.startswith("5.1.1.0 ") and "    Conv2D(6, (1, 1)" in line for line in lines)
    _, params, state = net.init(jax.random.key(0), (None, *shape))
    assert f"total params: {sum(p.size for p in jax.tree.leaves(params)):,}" in text
    assert f"state (not trained): {sum(s.size for s in jax.tree.leaves(state)):,}" in text


def test_summary_shows_branches_of_branches_nested():
    # They were flattened: "(None, 3), (None, 3), (None, 4)" read as three branches.
    net = serial(FanOut(2), parallel(serial(FanOut(2)), Dense(4)))
    line = next(line for line in summary(net, (None, 3)).splitlines()
                if line.startswith("1 "))
    assert line.split("parallel")[1].strip() == "((None, 3), (None, 3)), (None, 4)"
    assert rows(net, (None, 3))[1].values_per_example == 3 + 3 + 4


def test_memory_estimates_count_the_values_a_layer_makes():
    """A Residual's FanOut (its input twice) and Identity shortcut make no new values: they
    counted in the activation estimate as 28% of a ResNet-18's, which then refused it at batch
    128 on an 8 GB machine where it takes under 3 GiB."""
    net = serial(Dense(4), Residual(Dense(4), Relu()), Flatten())
    table = [row for row in rows(net, (None, 3)) if row.leaf]
    held = {row.name.split("(")[0]: row.held_per_example for row in table}
    assert held == {"Dense": 4, "FanOut": 0, "Relu": 4, "Identity": 0, "FanInSum": 4,
                    "Flatten": 0}
    assert sum(row.held_per_example for row in table) == 4 + 4 + 4 + 4  # two Denses


def test_branching_net_jits_and_vmaps_over_params(key):
    net, shape = NETS["fanout_concat"]
    x = jax.random.normal(key, (4, *shape))
    _, params, state = net.init(key, (None, *shape))
    eager = net.apply(params, state, x)[0]
    np.testing.assert_allclose(jax.jit(net.apply)(params, state, x)[0], eager, rtol=1e-14)
    stacked = jax.vmap(lambda k: net.init(k, (None, *shape))[1])(jax.random.split(key, 3))
    ensemble = jax.vmap(lambda p: net.apply(p, state, x)[0])(stacked)
    first = jax.tree.map(lambda leaf: leaf[0], stacked)
    np.testing.assert_allclose(ensemble[0], net.apply(first, state, x)[0], rtol=1e-13)


def test_what_is_not_a_layer_or_a_loss_is_one_type_error():
    """A factory where a layer goes (summary: AttributeError), a loss's name or another
    library's loss where a jaxnn Loss goes (AttributeError: 'str' object has no attribute
    'grad'), and an empty Residual (it returned 2x)."""
    net = serial(Dense(3))
    _, params, state = net.init(jax.random.key(0), (None, 4))
    x, y = jnp.ones((2, 4)), jnp.zeros((2, 3))
    for call, message in (
            (lambda: serial(Relu), r"serial: argument 0 is not a Layer: .* \(did you forget "
                                   r"the parentheses"),
            (lambda: summary(Dense, (None, 4)), r"summary: net is not a Layer: .*Dense"),
            (lambda: manual.grad(Dense, losses.mse, params, state, x, y),
             r"manual: net is not a Layer"),
            (lambda: manual.grad(net, "mse", params, state, x, y),
             r"manual: loss must be a jaxnn.losses.Loss .*got 'mse'"),
            (lambda: Residual(), r"Residual needs at least one layer")):
        with pytest.raises(TypeError, match=message):
            call()


def test_a_missing_key_or_state_names_the_layer_and_the_value():
    """A key of 0 said JAX's "invalid PRNG key data", init with None "unexpected PRNG key
    type NoneType", and BatchNorm given ``()`` as its state "tuple indices must be
    integers": none named the layer or what it wanted."""
    net = serial(Dense(4), BatchNorm(), Dropout(0.5))
    _, params, state = net.init(jax.random.key(0), (None, 3))
    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=re.escape(
            f"{net.name}: key must be a PRNG key such as jax.random.key(0), got 0")):
        net.apply(params, state, x, train=True, key=0)
    with pytest.raises(ValueError, match=re.escape(
            f"{net.name}: init needs a PRNG key such as jax.random.key(0), got None")):
        net.init(None, (None, 3))
    bn = BatchNorm()
    _, bn_params, _ = bn.init(jax.random.key(0), (None, 3))
    for bad, quoted in (((), "()"), ({"mean": jnp.zeros(3)}, "PyTreeDef({'mean': *})")):
        with pytest.raises(ValueError, match=re.escape(
                f"{bn.name}: its state is the {{'mean', 'var'}} dict its init returns "
                f"(running statistics), got {quoted}")):
            bn.apply(bn_params, bad, x, train=True)
