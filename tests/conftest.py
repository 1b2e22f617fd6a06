"""Strict numerics for every test (as Equinox's suite does) and a PRNG key fixture."""

import jax
import pytest

# float64 is enabled so tests can claim exactness; float32 tests build float32 arrays and
# parameters explicitly, and strict promotion turns any silent mixing into an error.
jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")


@pytest.fixture
def key():
    return jax.random.key(0)
