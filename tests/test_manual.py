"""Manual delta-rule gradients against jax.grad (float64) and finite differences.

Built micrograd-style: the same gradient computed two ways, compared value by value.
"""

import collections
import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnn import (
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Conv2DTranspose,
    Dense,
    Dropout,
    Elu,
    Flatten,
    Gelu,
    GlobalAvgPool,
    Identity,
    LeakyRelu,
    LogSoftmax,
    MaxPool2D,
    Relu,
    Selu,
    Sigmoid,
    Silu,
    Softmax,
    Softplus,
    SumPool2D,
    Tanh,
    losses,
    manual,
    serial,
)
from jaxnn.layers import _winograd

RTOL = 1e-10
ACTIVATIONS = [Identity, Sigmoid, Tanh, Relu, LeakyRelu, Gelu, lambda: Gelu(False), Softplus,
               Elu, Selu, Silu, Softmax, LogSoftmax]
OUT = 3


def _targets(loss, batch, key):
    if loss.name == "softmax_cross_entropy":
        return jax.random.randint(key, (batch,), 0, OUT)
    if "binary" in loss.name:
        return jax.random.bernoulli(key, 0.5, (batch, OUT)).astype(jnp.float64)
    return jax.random.normal(key, (batch, OUT))


def _head(loss):
    """Layers after the last Dense: probabilities for binary_cross_entropy, else none."""
    return [Sigmoid()] if loss.name == "binary_cross_entropy" else []


def assert_manual_equals_autodiff(cases, *, key=None, train=False, rtol=RTOL):
    """For each ``(net, loss, x, y)`` of ``cases``: the manual gradient equals jax.grad of
    the reference forward, leaf by leaf, within ``rtol`` of the leaf's largest entry."""
    cases = list(cases)
    inits = [net.init(jax.random.key(42), (None, *x.shape[1:]))[1:] for net, _, x, _ in cases]

    # Every case's two sides compiled as one program: a test compiles once, not twice per
    # case (op-by-op dispatch of a CNN is far slower still).
    def both(all_params):
        grads = []
        for (net, loss, x, y), (_, state), params in zip(cases, inits, all_params, strict=True):
            got = manual.grad(net, loss, params, state, x, y, key=key, train=train)
            # The reference forward: jax.grad by JAX itself, not through any layer's own rule.
            want = jax.grad(lambda p, net=net, loss=loss, x=x, y=y, state=state: loss(
                net.reference.apply(p, state, x, key=key, train=train)[0], y))(params)
            grads.append((got, want))
        return grads

    results = jax.jit(both)([params for params, _ in inits])
    for (net, loss, x, _), (got, want) in zip(cases, results, strict=True):
        assert jax.tree.structure(got) == jax.tree.structure(want)
        for (path, g), w in zip(jax.tree_util.tree_flatten_with_path(got)[0],
                                jax.tree.leaves(want), strict=True):
            where = (net.name, loss.name, x.shape, jax.tree_util.keystr(path))
            assert g.shape == w.shape and g.dtype == w.dtype == jnp.float64, where
            scale = float(jnp.max(jnp.abs(w)))
            error = float(jnp.max(jnp.abs(g - w)))
            assert error <= rtol * scale, (*where, error, scale)


# Depth 1 seeds the output layer alone; depth 3 also carries a delta through two hidden
# layers (hidden to hidden and hidden to output), which is every step a deeper net repeats.
@pytest.mark.parametrize("depth", [1, 3])
@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: a().name)
def test_mlp_every_activation_loss_and_batch(depth, activation, key):
    cases = []
    for loss in losses.LOSSES.values():
        for batch in (1, 7):
            layers = []
            for _ in range(depth - 1):
                layers += [Dense(6), activation()]
            # The output activation is exercised with MSE (the seeds' delta^L = (a - y) g'(z)).
            layers += [Dense(OUT)] + ([activation()] if loss is losses.mse else _head(loss))
            x = jax.random.normal(key, (batch, 4))
            cases.append((serial(*layers), loss, x, _targets(loss, batch, jax.random.key(batch))))
    assert_manual_equals_autodiff(cases)


WIDE = _winograd.MIN_CHANNELS
CNNS = {
    "conv_s1_same_maxpool": lambda: [Conv2D(3, 3, stride=1, padding="SAME"), Relu(),
                                     MaxPool2D(2), Flatten()],
    "conv_s2_valid_avgpool": lambda: [Conv2D(4, 3, stride=2, padding="VALID"), Tanh(),
                                      AvgPool2D(2, 1), Flatten()],
    "conv_s2_pad1_overlapping_maxpool": lambda: [Conv2D(3, (3, 2), stride=2, padding=1),
                                                 Sigmoid(), MaxPool2D(3, 2, padding="SAME"),
                                                 Flatten()],
    "two_convs_avgpool_same": lambda: [Conv2D(2, 3, padding=1), Gelu(), Conv2D(3, 2, stride=2),
                                       AvgPool2D(2, padding="SAME"), Flatten()],
    "avgpool_count_real_cells": lambda: [Conv2D(2, 1), AvgPool2D(3, 2, padding=1,
                                                                 count_include_pad=False),
                                         Flatten()],
    "conv_s1_valid_no_bias": lambda: [Conv2D(2, 2, padding="VALID", use_bias=False),
                                      Softplus(), Flatten()],
    # The second and third convolutions run as Winograd's F(2x2, 3x3) on CPU.
    "winograd_same_then_valid": lambda: [Conv2D(WIDE, 3, padding=1), Relu(), Conv2D(WIDE, 3),
                                         Relu(), Conv2D(3, 3, padding="VALID"), Flatten()],
    # (9, 8) -> (5, 4) -> (10, 8) -> (5, 4) -> (10, 6) -> (C,)
    "conv_transposes_sumpool_global_avgpool": lambda: [
        Conv2D(3, 3, stride=2), Selu(), Conv2DTranspose(3, 3, stride=2), Elu(),
        SumPool2D(3, 2, padding="SAME"),
        Conv2DTranspose(4, (2, 3), stride=(2, 1), padding="VALID"), Silu(), GlobalAvgPool()],
}


# Every CNN with the softmax loss, and every loss on two of them: a loss's delta is the same
# whatever network it starts (the MLP test above crosses every loss with every activation),
# so crossing all eight CNNs with all four losses would repeat the same checks.
CNN_CASES = [(name, losses.softmax_cross_entropy) for name in CNNS] + [
    (name, loss) for name in ("conv_s2_pad1_overlapping_maxpool", "two_convs_avgpool_same")
    for loss in losses.LOSSES.values() if loss is not losses.softmax_cross_entropy]


@pytest.mark.parametrize(("name", "loss"), CNN_CASES,
                         ids=lambda case: getattr(case, "name", case))
def test_cnn_every_loss_and_batch(name, loss, key):
    net = serial(*CNNS[name](), Dense(OUT), *_head(loss))
    assert_manual_equals_autodiff([(net, loss, jax.random.normal(key, (batch, 9, 8, 2)),
                                    _targets(loss, batch, key)) for batch in (1, 7)])


@pytest.mark.parametrize("name", list(CNNS))
def test_fast_cpu_gradient_equals_the_reference(name, key):
    """jax.grad through the layers' own rules (CPU) equals jax.grad of the plain forward."""
    net = serial(*CNNS[name](), Dense(OUT))
    assert net.reference is not net
    x = jax.random.normal(key, (7, 9, 8, 2))
    y = _targets(losses.softmax_cross_entropy, 7, key)
    _, params, state = net.init(key, (None, 9, 8, 2))
    grads = [jax.jit(jax.grad(
        lambda p, f=f: losses.softmax_cross_entropy(f(p, state, x)[0], y)))(params)
             for f in (net.apply, net.reference.apply)]
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


SEQUENCE_NETS = {
    # (9, 2) -> (5, 3) -> (2, 4)
    "conv1d_s2_same_then_pad_pair": lambda: [
        Conv1D(3, 3, stride=2), Selu(),
        Conv1D(4, 4, stride=3, padding=(2, 1), use_bias=False), Elu(0.5), Flatten()],
}


@pytest.mark.parametrize("name", list(SEQUENCE_NETS))
@pytest.mark.parametrize("loss", list(losses.LOSSES.values()), ids=lambda loss: loss.name)
def test_conv1d_every_loss_and_batch(name, loss, key):
    net = serial(*SEQUENCE_NETS[name](), Dense(OUT), *_head(loss))
    assert_manual_equals_autodiff([(net, loss, jax.random.normal(key, (batch, 9, 2)),
                                    _targets(loss, batch, key)) for batch in (1, 7)])


def test_dropout_rule_uses_the_forward_mask(key):
    net = serial(Dense(8), Relu(), Dropout(0.4), Dense(OUT))
    x = jax.random.normal(key, (7, 4))
    y = _targets(losses.mse, 7, key)
    assert_manual_equals_autodiff([(net, losses.mse, x, y)], key=jax.random.key(3), train=True)


def test_max_pool_ties_go_where_jax_grad_sends_them(key):
    # Every window holds tied maxima; the rule must pick the same one as jax.grad.
    x = jnp.round(jax.random.uniform(key, (2, 6, 6, 2)) * 2)
    for pool in (MaxPool2D(2), MaxPool2D(3, 1, padding="SAME"), MaxPool2D(2, 1)):
        _, params, state = pool.init(key, (None, 6, 6, 2))
        y, _ = pool.apply(params, state, x)
        dy = jax.random.normal(jax.random.key(1), y.shape)
        _, dx = pool.backward(params, state, x, y, dy)
        want = jax.vjp(lambda xx, p=pool: p.reference.apply((), (), xx)[0], x)[1](dy)[0]
        np.testing.assert_allclose(dx, want, rtol=0, atol=1e-13)


def test_check_reports_every_leaf(key, capsys):
    net = serial(Conv2D(2, 3, stride=2, padding=1), Relu(), Flatten(), Dense(4), Tanh(),
                 Dense(OUT))
    x = jax.random.normal(key, (5, 6, 6, 1))
    _, params, state = net.init(key, (None, 6, 6, 1))
    report = manual.check(net, losses.softmax_cross_entropy, params, state, x,
                          _targets(losses.softmax_cross_entropy, 5, key))
    assert [leaf.path for leaf in report.leaves] == [
        "[0]['b']", "[0]['w']", "[3]['b']", "[3]['w']", "[5]['b']", "[5]['w']"]
    assert report.leaves[1].layer.startswith("layer 0 (Conv2D")
    assert report.worst_autodiff_rel < RTOL
    # Central differences with step eps**(1/3) err by about eps**(2/3) (truncation and
    # rounding alike); measured 6 such units.
    assert report.worst_fd_rel < 64 * float(jnp.finfo(jnp.float64).eps) ** (2 / 3)
    assert len(report.layers) == 6
    assert "[3]['w']" in capsys.readouterr().out


def test_check_catches_a_planted_wrong_rule(key):
    sigmoid = Sigmoid()
    # A classic slip: g'(z) written as y instead of y (1 - y).
    wrong = sigmoid._replace(backward=lambda p, s, x, y, dy, **kw: ((), dy * y))
    net = serial(Dense(5), wrong, Dense(OUT))
    x = jax.random.normal(key, (7, 4))
    _, params, state = net.init(key, (None, 4))
    with pytest.raises(manual.GradientCheckError) as error:
        manual.check(net, losses.mse, params, state, x, _targets(losses.mse, 7, key),
                     verbose=False)
    message = str(error.value)
    assert "layer rule layer 1 (Sigmoid())" in message
    assert "leaf [0]['w'] of layer 0 (Dense(5))" in message
    assert "finite differences" in message


def test_check_catches_a_wrong_parameter_gradient(key):
    dense = Dense(OUT)

    def backward(params, state, x, y, dy, **kw):
        grads, dx = dense.backward(params, state, x, y, dy, **kw)
        return {"w": grads["w"], "b": 2 * grads["b"]}, dx

    net = serial(Dense(5), Tanh(), dense._replace(backward=backward))
    x = jax.random.normal(key, (7, 4))
    _, params, state = net.init(key, (None, 4))
    with pytest.raises(manual.GradientCheckError, match=r"layer rule layer 2 \(Dense\(3\)\)"):
        manual.check(net, losses.mse, params, state, x, _targets(losses.mse, 7, key),
                     verbose=False)


def test_manual_grad_jits_and_vmaps(key):
    net = serial(Dense(6), Sigmoid(), Dense(OUT))
    _, params, state = net.init(key, (None, 4))
    x = jax.random.normal(key, (7, 4))
    y = _targets(losses.mse, 7, key)
    eager = manual.grad(net, losses.mse, params, state, x, y)
    jitted = jax.jit(lambda p: manual.grad(net, losses.mse, p, state, x, y))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-12), eager, jitted)
    stacked = jax.vmap(lambda k: net.init(k, (None, 4))[1])(jax.random.split(key, 3))
    per_trial = jax.vmap(lambda p: manual.grad(net, losses.mse, p, state, x, y))(stacked)
    assert per_trial[0]["w"].shape == (3, 4, 6)
    # Eager calls reuse one compiled program: a second call with new values compiles nothing.
    compiled = manual._compiled_backprop(net, losses.mse, False, None)
    before = compiled._cache_size()
    again = manual.grad(net, losses.mse, params, state, x + 1, y)
    assert compiled._cache_size() == before == 1
    assert not np.allclose(again[0]["w"], eager[0]["w"])


def _assert_grads_equal(got, want):
    assert jax.tree.structure(got) == jax.tree.structure(want)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-14),
                 got, want)


def test_dense_rule_takes_the_leading_axes_apply_takes(key):
    """``x @ w`` maps any leading axes (a single example under ``jax.vmap``, or (2, 5)
    rows that init's (batch, features) did not foresee); the rule sums over them all, as
    ``jax.grad`` does. It returned a (2, 2, 3) weight gradient for a (2, 3) weight."""
    net = serial(Dense(3), Tanh(), Dense(OUT))
    _, params, state = net.init(key, (None, 2))
    x = jax.random.normal(key, (2, 5, 2))
    y = jax.random.normal(key, (2, 5, OUT))
    _assert_grads_equal(manual.grad(net, losses.mse, params, state, x, y),
                        jax.grad(lambda p: losses.mse(net.apply(p, state, x)[0], y))(params))
    dy = jax.random.normal(key, (4, 3))
    single = jax.vmap(lambda xi, di: net.children[0].backward(params[0], (), xi, None, di))(
        x[0, :4], dy)
    batch = net.children[0].backward(params[0], (), x[0, :4], None, dy)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a.sum(0), b, rtol=1e-12),
                 single[0], batch[0])
    np.testing.assert_allclose(single[1], batch[1], rtol=1e-12)


def test_params_given_as_lists_get_gradients_as_lists(key):
    """``apply`` takes a combinator's params and state as lists; so does the manual
    gradient, returning the params' own containers, as ``jax.grad`` does (comparing the two
    failed on a list against a tuple)."""
    net = serial(Dense(3), Relu(), Dense(OUT))
    _, params, state = net.init(key, (None, 4))
    x, y = jax.random.normal(key, (7, 4)), jax.random.normal(key, (7, OUT))
    got = manual.grad(net, losses.mse, list(params), list(state), x, y)
    assert isinstance(got, list)
    want = manual.grad(net, losses.mse, params, state, x, y)
    _assert_grads_equal(got, list(want))
    manual.check(net, losses.mse, list(params), list(state), x, y)
    # Leaf to leaf by name: an OrderedDict of ("w", "b") flattens in another order than the
    # rule's {"b", "w"} (paired in order, "w" got b's gradient).
    ordered = [collections.OrderedDict([("w", p["w"]), ("b", p["b"])]) if p else p
               for p in params]
    got = manual.grad(net, losses.mse, ordered, list(state), x, y)
    for g, w in zip(got, want, strict=True):
        for name in g:
            np.testing.assert_allclose(g[name], w[name], rtol=1e-12)


def test_an_error_in_a_rule_names_its_layer(key):
    """A rule that fails (here, given a delta of the wrong width) says which layer's rule
    it was, as the forward pass names the layer of its errors."""
    net = serial(Dense(3), Relu(), Dense(OUT))
    _, params, state = net.init(key, (None, 4))
    x = jax.random.normal(key, (7, 4))
    from jaxnn.combinators import pullback, trace

    tape = trace(net, params, state, x)[2]
    with pytest.raises(TypeError) as error:
        pullback(tape, jnp.ones((7, OUT + 1)))
    assert any(f"raised in the manual rule of layer 2 (Dense({OUT})) with an input and a "
               f"delta of shapes ((7, 3), (7, {OUT + 1}))" in note
               for note in error.value.__notes__)


def _load_experiment(name):
    path = pathlib.Path(__file__).parents[1] / "experiments" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_worked_example_numbers():
    result = _load_experiment("backprop_worked_example").worked_example()
    expected_forward = {"net_h1": 0.3775, "out_h1": 0.593269992, "out_h2": 0.596884378,
                        "net_o1": 1.105905967, "out_o1": 0.75136507, "out_o2": 0.772928465,
                        "E_total": 0.298371109}
    for name, value in expected_forward.items():
        assert result["forward"][name] == pytest.approx(value, abs=5e-10), name
    assert result["deltas"]["delta_o1"] == pytest.approx(0.138498562, abs=5e-10)
    expected_grads = {"w5": 0.082167041, "w1": 0.000438568, "w8": -0.022740242}
    for name, value in expected_grads.items():
        assert result["manual"][f"dE/d{name}"] == pytest.approx(value, abs=5e-10)
    for name, value in result["manual"].items():
        assert value == pytest.approx(result["autodiff"][name], rel=1e-12, abs=1e-18)
    expected_updated = {"w1": 0.149780716, "w2": 0.19956143, "w3": 0.24975114, "w4": 0.29950229,
                        "w5": 0.35891648, "w6": 0.408666186, "w7": 0.511301270,
                        "w8": 0.561370121, "b1": 0.35, "b2": 0.60}
    for name, value in expected_updated.items():
        assert result["updated"][name] == pytest.approx(value, abs=5e-9), name
    # The exact new error; the walk-through's 0.291027924 carries its rounded intermediates.
    assert result["E_new"] == pytest.approx(0.291027774, abs=5e-10)
    assert result["E_new"] == pytest.approx(0.291027924, abs=2e-7)


def test_manual_names_a_traced_train_flag_and_a_layer_missing_a_leaf():
    """``train=jnp.array(True)`` was an unhashable-type TypeError from the compile cache; a
    params tree missing a Dense's bias was a bare KeyError naming no layer."""
    import jaxnn

    net = serial(Dense(3), Relu(), Dense(2))
    _, params, state = net.init(jax.random.key(0), (None, 4))
    x, y = jnp.ones((5, 4)), jnp.arange(5) % 2
    with pytest.raises(ValueError, match=r"manual: train must be a Python bool, not a JAX "
                                         r"array; under jax\.jit, make it static"):
        jaxnn.manual.grad(net, jaxnn.softmax_cross_entropy, params, state, x, y,
                          train=jnp.array(True))
    missing = ({"w": params[0]["w"]}, *params[1:])
    with pytest.raises(KeyError) as error:
        jaxnn.manual.grad(net, jaxnn.softmax_cross_entropy, missing, state, x, y)
    assert any("layer 0 (Dense(3))" in note for note in error.value.__notes__)


def test_a_rule_whose_gradient_is_not_shaped_as_its_params_is_named():
    """A custom layer's rule returning a (5, 3) gradient for a (3,) parameter came back as
    its "gradient" (an optimizer would broadcast it into the parameter)."""
    import jaxnn
    from jaxnn.layer import Layer

    def init(key, shape):
        del key
        return tuple(shape), {"a": jnp.ones(shape[1:])}, ()

    def apply(params, state, x, *, key=None, train=False):
        del key, train
        return x * params["a"][None, :], state

    def backward(params, state, x, y, dy, *, key=None, train=False):
        del state, y, key, train
        return {"a": dy * x}, dy * params["a"][None, :]  # dA not summed over the batch

    net = serial(Layer(init, apply, backward, name="Scale"), Dense(2))
    _, params, state = net.init(jax.random.key(0), (None, 3))
    with pytest.raises(ValueError, match=r"manual rule of layer 0 \(Scale\) returned "
                       r"parameter gradients of shapes \[\(5, 3\)\], its params \[\(3,\)\]"):
        jaxnn.manual.grad(net, jaxnn.softmax_cross_entropy, params, state, jnp.ones((5, 3)),
                          jnp.arange(5) % 2)


def test_float32_finite_differences_pass_correct_rules_across_kinks():
    """A finite-difference step across a ReLU or max-pool kink failed correct float32
    gradients (5 of 24 small CNNs, some of these 10); where it crosses one, a one-sided
    difference agrees. A planted wrong rule still fails."""
    net = serial(Conv2D(4, (3, 3)), Relu(), MaxPool2D((2, 2)), Flatten(), Dense(8), Relu(),
                 Dense(3))
    for seed in range(10):
        key = jax.random.key(seed)
        _, params, state = net.init(key, (None, 6, 6, 2))
        params = jax.tree.map(lambda p: p.astype(jnp.float32), params)
        x = jax.random.normal(jax.random.fold_in(key, 1), (5, 6, 6, 2), jnp.float32)
        y = jnp.arange(5) % 3
        manual.check(net, losses.softmax_cross_entropy, params, state, x, y, verbose=False)
    relu = Relu()
    halved = relu._replace(backward=lambda p, s, x, y, dy, **kw: (
        p, 0.5 * relu.backward(p, s, x, y, dy, **kw)[1]))
    wrong = serial(*net.children[:5], halved, net.children[6])
    with pytest.raises(manual.GradientCheckError, match=r"layer 5 \(Relu"):
        manual.check(wrong, losses.softmax_cross_entropy, params, state, x, y, verbose=False)


def test_a_float32_input_with_float64_params_is_checked_at_float32_tolerances(key):
    """The tolerances came from the params' dtype alone: a float32 input, whose statistics
    BatchNorm computes in float32, failed correct rules at float64's 1e-8."""
    net = serial(BatchNorm(), Dense(4), Tanh(), Dense(3))
    _, params, state = net.init(key, (None, 5))
    x = jax.random.normal(key, (7, 5), jnp.float32) * 3 + 1
    with jax.numpy_dtype_promotion("standard"):  # float32 x meets float64 params
        manual.check(net, losses.softmax_cross_entropy, params, state, x, jnp.arange(7) % 3,
                     train=True, verbose=False)  # raised GradientCheckError
