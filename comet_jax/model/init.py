"""Fresh parameters for a model trained from scratch (tests, the CPU demo)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from comet_jax.config import MEMORY_RANK, CometConfig, ModelConfig


def init_params(model: ModelConfig, comet: CometConfig, key: jax.Array) -> dict:
    """Linear weights and embeddings N(0, initializer_range), norm scales 1 (docs/design.md §1.4)."""
    d, f, L, r = model.hidden_size, model.intermediate_size, model.num_layers, MEMORY_RANK
    hq, hkv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    dtype = jnp.dtype(model.param_dtype)
    shapes = {"wq": (L, d, hq), "wk": (L, d, hkv), "wv": (L, d, hkv), "wo": (L, hq, d),
              "w_gate": (L, d, f), "w_up": (L, d, f), "w_down": (L, f, d)}
    keys = iter(jax.random.split(key, 32))

    def normal(shape):
        return (jax.random.normal(next(keys), shape, jnp.float32) * model.initializer_range).astype(dtype)

    ones = lambda *shape: jnp.ones(shape, dtype)  # noqa: E731
    layers = {name: normal(shape) for name, shape in shapes.items()}
    layers.update(attn_norm=ones(L, d), mlp_norm=ones(L, d))
    if model.qk_norm:
        layers.update(q_norm=ones(L, model.head_dim), k_norm=ones(L, model.head_dim))
    if comet.has_global:
        layers["global_mem"] = {"norm": ones(L, d), "gate": normal((L, 2 * d)), "down": normal((L, d, r)),
                                "up": normal((L, r, d))}
    if comet.has_temp:
        layers["temp_mem"] = {"norm": ones(L, d), "down": normal((L, d, r)), "up": normal((L, r, d))}
    params = {"embed": normal((model.vocab_size, d)), "final_norm": ones(d), "layers": layers}
    if not model.tie_embeddings:
        params["lm_head"] = normal((d, model.vocab_size))
    return params
