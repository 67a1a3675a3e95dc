"""The two memory nets of one layer (docs/design.md §1.3 steps 3-4), as pure functions.

Global memory: x̂ = RMSNorm(x) with eps = machine epsilon of the compute dtype; the first
chunk takes s = x̂, later chunks gate g = sigmoid(W_g [x̂; s_prev]) per slot and
s = g s_prev + (1 - g) x̂; the output is o = s + U(V(s)).
Temp memory: p = ŷ + U'(V'(ŷ)) with ŷ = RMSNorm_{1e-12}(y), pushed into a FIFO of
`budget` entries where padding never displaces a real entry.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from comet_jax.model.backbone import rms_norm

TEMP_EPS = 1e-12


def gate_logit(p: dict, x: jnp.ndarray, s_prev: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(x̂, the gate's logit W_g [x̂; s_prev] per slot), the logit in (at least) float32."""
    x_hat = rms_norm(x, p["norm"], float(jnp.finfo(x.dtype).eps))
    f32 = jnp.promote_types(x.dtype, jnp.float32)
    return x_hat, jnp.matmul(jnp.concatenate([x_hat, s_prev], axis=-1), p["gate"], preferred_element_type=f32)


def global_update(p: dict, x: jnp.ndarray, s_prev: jnp.ndarray, o_prev: jnp.ndarray, first: jnp.ndarray,
                  live: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """x, s_prev, o_prev [B, G, D]; first, live [B] bool. Returns (o, s).

    A chunk that is not live (batch padding) leaves the memory untouched."""
    x_hat, logit = gate_logit(p, x, s_prev)
    # the gate and the blend in (at least) float32 whatever the compute dtype
    f32 = jnp.promote_types(x.dtype, jnp.float32)
    gate = jax.nn.sigmoid(logit)[..., None]
    blend = (gate * s_prev.astype(f32) + (1 - gate) * x_hat.astype(f32)).astype(x.dtype)
    s = jnp.where(first[:, None, None], x_hat, blend)
    o = s + (s @ p["down"]) @ p["up"]
    keep = ~live[:, None, None]
    return jnp.where(keep, o_prev, o), jnp.where(keep, s_prev, s)


def temp_entries(p: dict, y: jnp.ndarray) -> jnp.ndarray:
    """Queue entries p = ŷ + U'(V'(ŷ)) for beacon outputs y [B, n, D]."""
    y_hat = rms_norm(y, p["norm"], TEMP_EPS)
    return y_hat + (y_hat @ p["down"]) @ p["up"]


def fifo_push(queue: jnp.ndarray, queue_valid: jnp.ndarray, new: jnp.ndarray,
              new_valid: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Keep the newest `budget` valid entries of concat(queue, new), in age order,
    right-aligned (oldest first). queue [B, K, D], new [B, n, D]; *_valid bool."""
    budget = queue.shape[1]
    entries = jnp.concatenate([queue, new], axis=1)
    valid = jnp.concatenate([queue_valid, new_valid], axis=1)
    # number of valid entries strictly newer than each one
    newer = jnp.cumsum(valid[:, ::-1], axis=1)[:, ::-1] - valid
    keep = valid & (newer < budget)
    dest = jnp.where(keep, budget - 1 - newer, budget)  # out of range -> dropped
    rows = jnp.arange(entries.shape[0])[:, None]
    out = jnp.zeros_like(queue).at[rows, dest].set(entries, mode="drop")
    out_valid = jnp.zeros_like(queue_valid).at[rows, dest].set(keep, mode="drop")
    return out, out_valid
