"""Test set-up: 8 fake CPU devices (set before jax is imported), float32 everywhere."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()


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
