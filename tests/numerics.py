"""Comparisons used across tests."""

import jax
import numpy as np


def rel_err(a, b) -> float:
    """||a - b|| / ||b|| (2-norm over the whole array): the relative error of the array as
    a vector, meaningful for gradients whose entries cross zero, where an elementwise
    relative error is dominated by float32 rounding of near-zero entries."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_tree_close(a, b, rtol: float) -> float:
    """Every leaf of a within rtol of b (scale-relative); returns the worst error."""
    errs = jax.tree.leaves(jax.tree.map(rel_err, a, b))
    worst = max(errs)
    assert worst <= rtol, f"relative error {worst:.3g} > {rtol}"
    return worst
