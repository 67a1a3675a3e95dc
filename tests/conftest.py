"""Test set-up: 8 fake CPU devices (set before jax is imported), float32 everywhere."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
from xla_env import xla_flags  # noqa: E402

os.environ["XLA_FLAGS"] = xla_flags(8)

# One XLA compilation cache for the whole run, shared by the pytest workers and every
# subprocess they start (they inherit the environment): many tests compile the same train
# step or evaluation in a fresh process, and a cache hit skips the compile, not the run.
# Made by the first process to import this file (the xdist controller, before it starts the
# workers) and removed when that process ends; an existing JAX_COMPILATION_CACHE_DIR is kept.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _cache = tempfile.mkdtemp(prefix="comet-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)


import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(scope="module")
def mixed_plans():
    """Three sequences of different lengths under three planners (C = 7), for schedule tests."""
    from comet_jax import chunking

    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 50, n) for n in (26, 11, 17)]
    plans = [chunking.fixed(26, 7), chunking.random_sizes(11, 7, rng), chunking.right_aligned(17, 7)]
    return seqs, plans
