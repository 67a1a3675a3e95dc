"""Multi-host start-up: `jax.distributed.initialize` from config keys or the usual
environment variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; on
TPU pods and SLURM, JAX discovers them itself)."""

from __future__ import annotations

import os

import jax


def maybe_initialize(dist) -> bool:
    """Initialise the distributed runtime when configured; returns whether it did."""
    coordinator = dist.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS", "")
    num = dist.num_processes or int(os.environ.get("JAX_NUM_PROCESSES", "0") or 0)
    pid = dist.process_id if dist.process_id >= 0 else int(os.environ.get("JAX_PROCESS_ID", "-1") or -1)
    if not coordinator and num <= 1:
        return False
    jax.distributed.initialize(coordinator_address=coordinator or None, num_processes=num or None,
                               process_id=pid if pid >= 0 else None)
    return True
