"""Fresh parameters for a model trained from scratch (tests, the CPU demo), built from the
parameter schema (comet_jax/model/schema.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from comet_jax.checkpoint import nest
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.model import schema


def init_params(model: ModelConfig, comet: CometConfig, key: jax.Array) -> dict:
    """Linear weights and embeddings N(0, initializer_range), norm scales 1 (docs/design.md §1.4)."""
    dtype = jnp.dtype(model.param_dtype)
    keys = iter(jax.random.split(key, 32))
    flat = {}
    for path, (leaf, shape) in schema.leaves(model, comet).items():
        if leaf.init == "ones":
            flat[path] = jnp.ones(shape, dtype)
        else:
            flat[path] = (jax.random.normal(next(keys), shape, jnp.float32) * model.initializer_range).astype(dtype)
    return nest(flat)
