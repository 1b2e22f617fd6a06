"""The training engine: a pure, compiled ``train(key, hparams)`` built on `jax.lax.scan`.

`make_train` turns a config and a data set into a `Trainer`. Calling it, ``trainer(key,
hparams) -> (TrainState, metrics)``, runs every epoch inside one compiled program; its
pieces ``init`` and ``run_epochs`` let the host drive the same computation in chunks of
epochs (progress, checkpoints, early stopping) with identical results.

Numeric hyperparameters -- learning rate, momentum, weight decay, dropout rate and init
scale -- are array leaves of ``hparams`` (see `default_hparams`); the network and the optax
optimizer are built from them inside the traced function, so one compiled program serves
every value and ``jax.vmap(trainer)`` over ``(key, hparams)`` trains many trials at once.

Minibatches: each epoch draws a permutation from ``fold_in(key, epoch)`` and takes
``n_train // batch_size`` full batches; the last partial batch of the permutation is
dropped (every example is still seen across epochs, as the permutation changes). Dropout
keys are ``fold_in(epoch_key, step + 1)``. Because every random draw is indexed by the
epoch and step, a run resumed from a checkpoint continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxnn import hyperparameters, losses, manual, models, optim
from jaxnn.config import BACKPROPS, Config, ConfigError
from jaxnn.data import Dataset
from jaxnn.layer import Layer, check_layer, float_dtype

# optax mixes int32 step counts with floats (schedules, bias correction); its calls are traced
# under standard promotion so that a user's (or the tests') strict promotion still holds
# everywhere else.
OPTAX_PROMOTION = functools.partial(jax.numpy_dtype_promotion, "standard")
HPARAMS = hyperparameters.names(hyperparameters.TRACED)  # the traced leaves of ``hparams``
EVAL_BATCH = 1024


class TrainState(NamedTuple):
    """Everything a run carries between epochs (and what a checkpoint holds).

    Attributes:
      params: the network's parameters.
      model_state: the network's state (BatchNorm's running statistics), carried through
        every training step and used, as it stands, by evaluation; ``()`` per stateless layer.
      opt_state: the optax optimizer state.
      key: the run's raw (uint32) PRNG key; per-epoch keys are folded from it.
      epoch: the number of epochs done (an int32 scalar).
    """

    params: Any
    model_state: Any
    opt_state: Any
    key: jax.Array
    epoch: jax.Array


class Trainer(NamedTuple):
    """A compiled training program for one config and data set.

    Attributes:
      init: ``init(key, hparams, params=None) -> TrainState``; ``params`` replaces the
        drawn initial parameters (the key's first half draws them and the state otherwise).
      run_epochs: ``run_epochs(state, hparams, num_epochs, data=None, batches=None) ->
        (state, metrics)``, metrics stacked per epoch (``num_epochs`` is static: one compile
        per distinct value). ``data`` defaults to `Trainer.data`; a program that wraps the
        trainer in its own ``jax.jit`` passes ``data`` as an argument, so the data set is not
        baked into the compiled program as constants (slow to compile). ``batches``, from
        `Trainer.batches`, supplies the minibatch order instead of drawing it inside.
      batches: ``batches(key, first_epoch, num_epochs) -> int32 (num_epochs, steps,
        batch_size)``: the minibatch indices that ``run_epochs`` draws from ``state.key``.
        Drawing them in a separate program keeps the random-number code (slow to compile)
        out of the training program; the sweep does this.
      data: the device arrays ``(x_train, y_train, x_val, y_val)``.
      compile: ``compile(state, hparams, num_epochs) -> run`` compiles ahead of time (for
        timing compilation apart): ``run(state, hparams) -> (state, metrics)``.
      evaluate: ``evaluate(params, model_state, hparams, x, y) -> {"loss", "accuracy"}``
        (eval mode: BatchNorm on its running statistics).
      epochs: the configured number of epochs.
      steps_per_epoch: minibatches per epoch.
      dtype: the floating dtype of data and parameters.
    """

    init: Callable[..., TrainState]
    run_epochs: Callable[..., tuple[TrainState, dict]]
    batches: Callable[..., jax.Array]
    data: tuple
    compile: Callable[..., Callable[..., tuple[TrainState, dict]]]
    evaluate: Callable[..., dict]
    epochs: int
    steps_per_epoch: int
    dtype: Any

    def __call__(
        self, key: jax.Array, hparams: dict, data: tuple | None = None
    ) -> tuple[TrainState, dict]:
        """Trains from scratch for every epoch: ``(final TrainState, metrics)``.

        Under your own ``jax.jit``/``jax.vmap``, pass ``data=trainer.data`` through the
        jitted function's arguments to keep the data out of the compiled constants.
        """
        return self.run_epochs(self.init(key, hparams), hparams, self.epochs, data)


def default_hparams(config: Config, dtype: Any = jnp.float32) -> dict[str, jax.Array]:
    """The config's numeric hyperparameters as scalar arrays (the leaves a sweep varies)."""
    return {name: jnp.asarray(hyperparameters.config_value(config, name), dtype)
            for name in HPARAMS}


def stacked_hparams(configs: Sequence[Config], dtype: Any = jnp.float32) -> dict[str, np.ndarray]:
    """`default_hparams` of each config, stacked along a leading trial axis, as host arrays
    (512 trials' scalars as device arrays, then stacked, took ~0.5 s; a device array laid
    out over several devices by `jax.device_put` compiles a slicing program, a host array
    does not)."""
    return {name: np.asarray([hyperparameters.config_value(config, name) for config in configs],
                             jnp.dtype(dtype))
            for name in HPARAMS}


# Copies of the params a training step holds at most: the params, their gradients, the
# updates and two optimizer moments (Adam's).
PARAM_COPIES = 5


def to_device(array: np.ndarray, dtype: Any, sharding=None) -> jax.Array:
    """A host data array on the device (laid out by ``sharding``), floating values in
    ``dtype``: converted on the host, as `jnp.asarray` would compile a small program per
    shape to do."""
    array = np.asarray(array)
    if array.dtype.kind == "f":
        array = array.astype(jnp.dtype(dtype), copy=False)
    return jax.device_put(array, sharding)


def raw_key(key: jax.Array) -> jax.Array:
    """A typed or raw PRNG key as raw uint32 data (what checkpoints store)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(key)
    return key


def _data_mesh(batch_size: int) -> Mesh | None:
    """A 1-D mesh over all devices for data parallelism, or None on one device."""
    devices = jax.devices()
    if len(devices) == 1:
        return None
    if batch_size % len(devices):
        raise ConfigError("<config>", "training.batch_size",
                          f"{batch_size} does not split evenly over {len(devices)} devices")
    return Mesh(np.array(devices), ("data",))


def cast_floating(tree: Any, dtype: Any) -> Any:
    """``tree`` with its floating-point leaves cast to ``dtype`` (others untouched)."""
    return jax.tree_util.tree_map(
        lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def make_step(
    net: Layer,
    loss: losses.Loss,
    optimizer: optax.GradientTransformation,
    *,
    backprop: str = "autodiff",
    compute_dtype: Any = None,
) -> Callable[..., tuple[Any, Any, Any, jax.Array, jax.Array]]:
    """One training step: ``step(params, model_state, opt_state, x, y, key=None) ->
    (params, model_state, opt_state, loss, output)``, in train mode.

    Args:
      net: the network.
      loss: a `jaxnn.losses.Loss`.
      optimizer: an optax optimizer.
      backprop: "autodiff" (``jax.value_and_grad``) or "manual" (the layers' delta rules).
      compute_dtype: mixed precision, e.g. ``jnp.bfloat16``: the forward and backward passes
        run on copies of the params and inputs cast to it, while the params themselves (the
        master weights), their gradients, the state (BatchNorm's running statistics, updated
        in their own dtype), the optimizer and the loss stay in the params' dtype. None:
        everything in the params' dtype.

    Returns:
      The pure step function (jit it, or call it inside a compiled loop).

    Raises:
      ValueError: for an unknown ``backprop`` (it ran autodiff) or a ``compute_dtype`` that
        is not floating (an integer one cast the weights to 0).
      TypeError: for a ``net`` that is not a `Layer` or a ``loss`` that is not a `Loss`.
    """
    if backprop not in BACKPROPS:
        raise ValueError(f"make_step: backprop must be one of "
                         f"{', '.join(map(repr, BACKPROPS))}, got {backprop!r}")
    float_dtype(compute_dtype, "compute_dtype", "make_step")
    check_layer(net, "make_step: net")
    losses.check_loss(loss, "make_step")

    def step(params, model_state, opt_state, x, y, key=None):
        leaves = jax.tree_util.tree_leaves(params)
        master_dtype = leaves[0].dtype if leaves else x.dtype

        def to_compute(tree):
            return tree if compute_dtype is None else cast_floating(tree, compute_dtype)

        if backprop == "manual":
            value, grads, pred, new_state = manual.value_grad_and_output(
                net, loss, to_compute(params), model_state, to_compute(x), y,
                key=key, train=True, loss_dtype=master_dtype)
            grads = cast_floating(grads, master_dtype)
        else:
            def objective(p):  # The casts' transposes bring gradients back to master_dtype.
                pred, new_state = net.apply(to_compute(p), model_state, to_compute(x),
                                            key=key, train=True)
                pred = pred.astype(master_dtype)
                return loss.value(pred, y), (pred, new_state)

            (value, (pred, new_state)), grads = jax.value_and_grad(objective, has_aux=True)(
                params)
        new_state = jax.tree.map(lambda new, old: new.astype(old.dtype), new_state,
                                 model_state)
        with OPTAX_PROMOTION():
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, value, pred

    return step


def init_model(net, key: jax.Array, input_shape, hparams: dict, dtype) -> tuple[Any, Any]:
    """``net``'s initial ``(params, state)`` in ``dtype``, weights ("w") scaled by the init
    scale."""
    _, params, state = net.init(key, input_shape)
    return scale_weights(params, hparams["init_scale"], dtype), cast_floating(state, dtype)


def scale_weights(params: Any, scale: jax.Array, dtype) -> Any:
    """``params`` in ``dtype``, the weights ("w") times the init ``scale``."""
    scale = scale.astype(dtype)
    return jax.tree_util.tree_map_with_path(
        lambda path, p: p.astype(dtype) * scale if path[-1] == jax.tree_util.DictKey("w")
        else p.astype(dtype), params)


def default_network(config: Config, output_size: int) -> Callable[[dict], Layer]:
    """``network(hparams)``: the config's net, its Dropout rate taken from ``hparams``."""
    return lambda hparams: models.build(config.model, output_size,
                                        dropout=hparams["dropout"], source=config.source)


class _Setup(NamedTuple):
    """What the training functions below share, fixed when `make_train` builds a trainer."""

    net_for: Callable[[dict], Layer]  # network(hparams)
    loss: losses.Loss
    optimizer_config: Any  # (OptimizerConfig, ScheduleConfig)
    backprop: str
    dtype: Any
    compute_dtype: Any
    input_shape: tuple
    n_train: int
    batch_size: int
    steps: int
    epochs: int
    classification: bool
    has_val: bool
    mesh: Mesh | None


def _optimizer(setup: _Setup, hparams: dict) -> optax.GradientTransformation:
    optimizer_cfg, schedule_cfg = setup.optimizer_config
    return optim.optimizer(optimizer_cfg, schedule_cfg, hparams, setup.steps, setup.epochs)


def _metrics(setup: _Setup, pred: jax.Array, y: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The loss and (for classification; else NaN) the accuracy of a batch's predictions."""
    value = setup.loss.value(pred, y)
    if not setup.classification:
        return value, jnp.full((), jnp.nan, value.dtype)
    hits = jnp.argmax(pred, axis=-1).astype(y.dtype) == y
    return value, jnp.mean(hits.astype(value.dtype))


def _evaluate(setup: _Setup, params, model_state, hparams, x, y) -> dict[str, jax.Array]:
    """Loss and accuracy on ``(x, y)`` in eval mode, in chunks of `EVAL_BATCH` examples."""
    net, compute_dtype = setup.net_for(hparams), setup.compute_dtype
    if compute_dtype is not None:  # Cast once, not per evaluation chunk.
        params, model_state = cast_floating((params, model_state), compute_dtype)

    def forward(xb):
        if compute_dtype is None:
            return net.apply(params, model_state, xb)[0]
        return net.apply(params, model_state, xb.astype(compute_dtype))[0].astype(setup.dtype)

    n = len(x)
    if n <= EVAL_BATCH:  # One pass: no loop to compile.
        value, accuracy = _metrics(setup, forward(x), y)
        return {"loss": value, "accuracy": accuracy}
    chunks = math.ceil(n / EVAL_BATCH)
    size = math.ceil(n / chunks)
    padded = jnp.pad(x, ((0, chunks * size - n), *[(0, 0)] * (x.ndim - 1)))
    pred = jax.lax.map(forward, padded.reshape(chunks, size, *x.shape[1:]))
    value, accuracy = _metrics(setup, pred.reshape(chunks * size, -1)[:n], y)
    return {"loss": value, "accuracy": accuracy}


def _init(setup: _Setup, key, hparams, params=None) -> TrainState:
    init_key, run_key = jax.random.split(key)
    drawn, model_state = init_model(setup.net_for(hparams), init_key, setup.input_shape,
                                    hparams, setup.dtype)
    params = drawn if params is None else params
    with OPTAX_PROMOTION():
        opt_state = _optimizer(setup, hparams).init(params)
    return TrainState(params, model_state, opt_state, raw_key(run_key),
                      jnp.zeros((), jnp.int32))


def _epoch_batches(setup: _Setup, epoch_key) -> jax.Array:
    order = jax.random.permutation(jax.random.fold_in(epoch_key, 0), setup.n_train)
    return order[: setup.steps * setup.batch_size].reshape(setup.steps, setup.batch_size)


def _batches(setup: _Setup, key, first_epoch, num_epochs: int) -> jax.Array:
    epochs_done = jnp.asarray(first_epoch, jnp.int32) + jnp.arange(num_epochs, dtype=jnp.int32)
    return jax.vmap(lambda epoch: _epoch_batches(setup, jax.random.fold_in(key, epoch)))(
        epochs_done)


def _one_epoch(setup: _Setup, hparams, data, carry, batches=None):
    """One epoch of minibatch steps (a `jax.lax.scan`), then its metrics."""
    x_train, y_train, x_val, y_val = data
    params, model_state, opt_state, key, epoch = carry
    train_step = make_step(setup.net_for(hparams), setup.loss, _optimizer(setup, hparams),
                           backprop=setup.backprop, compute_dtype=setup.compute_dtype)
    epoch_key = jax.random.fold_in(key, epoch)
    if batches is None:
        batches = _epoch_batches(setup, epoch_key)

    def step(carry, inputs):
        params, model_state, opt_state = carry
        index, batch = inputs
        xb, yb = x_train[batch], y_train[batch]
        if setup.mesh is not None:
            xb, yb = (jax.lax.with_sharding_constraint(
                a, NamedSharding(setup.mesh, PartitionSpec("data"))) for a in (xb, yb))
        dropout_key = jax.random.fold_in(epoch_key, index + 1)
        params, model_state, opt_state, value, pred = train_step(
            params, model_state, opt_state, xb, yb, dropout_key)
        _, accuracy = _metrics(setup, pred, yb)
        return (params, model_state, opt_state), (value, accuracy)

    (params, model_state, opt_state), (batch_losses, batch_accuracies) = jax.lax.scan(
        step, (params, model_state, opt_state), (jnp.arange(setup.steps), batches))
    metrics = _epoch_metrics(setup, epoch, batch_losses, batch_accuracies)
    if setup.has_val:
        val = _evaluate(setup, params, model_state, hparams, x_val, y_val)
        metrics["val_loss"], metrics["val_accuracy"] = val["loss"], val["accuracy"]
    return (params, model_state, opt_state, key, epoch + 1), metrics


def _epoch_metrics(setup: _Setup, epoch, batch_losses, batch_accuracies) -> dict:
    """Training metrics of an epoch, with the first non-finite step (-1 if none) and the
    loss just before it (the epoch's last when none is)."""
    steps = setup.steps
    finite = jnp.isfinite(batch_losses)
    first_bad = jnp.argmin(finite)  # first False; 0 when all are finite
    last_good = jnp.where(jnp.all(finite), steps - 1, first_bad - 1)
    return {
        "train_loss": jnp.mean(batch_losses),
        "train_accuracy": jnp.mean(batch_accuracies),
        "nonfinite_step": jnp.where(jnp.all(finite), -1,
                                    epoch * steps + first_bad.astype(epoch.dtype)),
        "last_finite_loss": jnp.where(last_good >= 0, batch_losses[last_good], jnp.nan),
    }


def _run(setup: _Setup, state, hparams, data, num_epochs: int, batches):
    shape = (num_epochs, setup.steps, setup.batch_size)
    if batches is not None and batches.shape != shape:
        raise ValueError(f"batches has shape {batches.shape}; {num_epochs} epochs need "
                         f"{shape}")
    # Without ``batches`` the scan has no inputs and each epoch draws its own order.
    carry, metrics = jax.lax.scan(lambda c, b: _one_epoch(setup, hparams, data, c, b),
                                  tuple(state), batches, length=num_epochs)
    return TrainState(*carry), metrics


def _setup(config: Config, dataset: Dataset, mesh, network) -> _Setup:
    """Validates what the config asks of the data and fixes the training setup."""
    dtype = jnp.dtype(config.training.precision)
    if jnp.dtype(jax.dtypes.canonicalize_dtype(dtype)) != dtype:
        raise ConfigError(config.source, "training.precision",
                          "float64 needs jax_enable_x64 (jaxnn.run enables it)")
    batch_size, n_train = config.training.batch_size, len(dataset.x_train)
    if batch_size > n_train:
        raise ConfigError(config.source, "training.batch_size",
                          f"{batch_size} exceeds the {n_train} training examples")
    return _Setup(
        net_for=network or default_network(config, dataset.output_size),
        loss=losses.get(config.model.loss),
        optimizer_config=(config.optimizer, config.schedule),
        backprop=config.training.backprop,
        dtype=dtype,
        compute_dtype=(jnp.dtype(config.training.compute_dtype)
                       if config.training.compute_dtype else None),
        input_shape=(None, *dataset.input_shape),
        n_train=n_train, batch_size=batch_size, steps=n_train // batch_size,
        epochs=config.training.epochs,
        classification=dataset.num_classes > 0,
        has_val=len(dataset.x_val) > 0,
        mesh=_data_mesh(batch_size) if mesh == "auto" else mesh)


def make_train(
    config: Config,
    dataset: Dataset,
    *,
    mesh: Mesh | str | None = "auto",
    network: Callable[[dict[str, jax.Array]], Layer] | None = None,
) -> Trainer:
    """Builds the compiled training program for ``config`` on ``dataset``.

    Args:
      config: a validated config.
      dataset: the data, already in the layout the network takes (see `jaxnn.run`).
      mesh: a 1-D device mesh whose axis shards each minibatch (data parallelism, params
        replicated); "auto" uses every device when there is more than one; None: no sharding.
      network: ``network(hparams) -> Layer``, the net to train for these (traced)
        hyperparameters; default: `default_network` of the config. A sweep that packs
        several hidden widths into one program passes its masked net here
        (`jaxnn.sweep.packing.masked_network`).

    Returns:
      A `Trainer`.

    Raises:
      ConfigError: when the batch size exceeds the training set or does not split over the
        devices.
    """
    setup = _setup(config, dataset, mesh, network)
    run_jit = jax.jit(functools.partial(_run, setup), static_argnums=3)
    replicated = (NamedSharding(setup.mesh, PartitionSpec()) if setup.mesh is not None
                  else None)
    device_data = tuple(to_device(a, setup.dtype, replicated)
                        for a in (dataset.x_train, dataset.y_train, dataset.x_val, dataset.y_val))

    def run_epochs(state, hparams, num_epochs, data=None, batches=None):
        return run_jit(state, hparams, device_data if data is None else data, int(num_epochs),
                       batches)

    def compile_epochs(state, hparams, num_epochs):
        compiled = run_jit.lower(state, hparams, device_data, int(num_epochs), None).compile()
        return lambda state, hparams: compiled(state, hparams, device_data, None)

    # One program draws every initial value: eagerly, each of init's few dozen small ops
    # compiled alone (~2 s on a 2-core CPU for an MLP).
    return Trainer(jax.jit(functools.partial(_init, setup)), run_epochs,
                   functools.partial(_batches, setup), device_data, compile_epochs,
                   jax.jit(functools.partial(_evaluate, setup)), setup.epochs, setup.steps,
                   setup.dtype)
