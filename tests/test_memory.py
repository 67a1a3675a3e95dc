"""Memory nets: FIFO semantics and the gated global update."""

import jax.numpy as jnp
import numpy as np

from comet_jax.model.memory import fifo_push, global_update


def test_fifo_keeps_newest_real_entries_in_age_order():
    rng = np.random.default_rng(0)
    budget, n, d = 4, 3, 2
    for trial in range(200):
        q_valid = rng.random((1, budget)) < 0.5
        new_valid = rng.random((1, n)) < 0.6
        q = rng.normal(size=(1, budget, d)).astype(np.float32)
        new = rng.normal(size=(1, n, d)).astype(np.float32)
        # reference: a Python list, oldest first
        entries = [q[0, i] for i in range(budget) if q_valid[0, i]] + [new[0, i] for i in range(n) if new_valid[0, i]]
        kept = entries[-budget:]
        out, out_valid = fifo_push(jnp.asarray(q), jnp.asarray(q_valid), jnp.asarray(new), jnp.asarray(new_valid))
        out, out_valid = np.asarray(out), np.asarray(out_valid)
        assert out_valid[0].tolist() == [False] * (budget - len(kept)) + [True] * len(kept)
        np.testing.assert_array_equal(out[0][out_valid[0]], np.array(kept).reshape(-1, d))


def test_global_update_first_gated_and_padding():
    rng = np.random.default_rng(1)
    d, g = 4, 2
    p = {"norm": jnp.asarray(rng.normal(size=d), jnp.float32), "gate": jnp.asarray(rng.normal(size=2 * d), jnp.float32),
         "down": jnp.asarray(rng.normal(size=(d, 8)), jnp.float32),
         "up": jnp.asarray(rng.normal(size=(8, d)), jnp.float32)}
    x = jnp.asarray(rng.normal(size=(3, g, d)), jnp.float32)
    s_prev = jnp.asarray(rng.normal(size=(3, g, d)), jnp.float32)
    o_prev = jnp.asarray(rng.normal(size=(3, g, d)), jnp.float32)
    o, s = global_update(p, x, s_prev, o_prev, jnp.array([True, False, False]), jnp.array([True, True, False]))
    xn = np.asarray(x) / np.sqrt((np.asarray(x) ** 2).mean(-1, keepdims=True) + np.finfo(np.float32).eps)
    xn = xn * np.asarray(p["norm"])
    gate = 1 / (1 + np.exp(-(np.concatenate([xn, s_prev], -1) @ np.asarray(p["gate"]))))[..., None]
    s_ref = np.where(np.array([True, False, False])[:, None, None], xn, gate * s_prev + (1 - gate) * xn)
    np.testing.assert_allclose(s[:2], s_ref[:2], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(o[:2], s_ref[:2] + s_ref[:2] @ np.asarray(p["down"]) @ np.asarray(p["up"]),
                               rtol=1e-5, atol=1e-5)
    # a padding chunk leaves the memory untouched
    np.testing.assert_array_equal(s[2], s_prev[2])
    np.testing.assert_array_equal(o[2], o_prev[2])
