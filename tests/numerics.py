"""Comparisons used across tests."""

import jax
import numpy as np


def rel_err(a, b) -> float:
    """max |a - b| / max |b|: the error relative to the array's scale (float32-safe for
    entries near zero, where an elementwise relative error means nothing)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def assert_tree_close(a, b, rtol: float) -> float:
    """Every leaf of a within rtol of b (scale-relative); returns the worst error."""
    errs = jax.tree.leaves(jax.tree.map(rel_err, a, b))
    worst = max(errs)
    assert worst <= rtol, f"relative error {worst:.3g} > {rtol}"
    return worst
