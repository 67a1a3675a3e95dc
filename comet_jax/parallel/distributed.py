"""Multi-host start-up: one process per host, `jax.distributed.initialize` before anything
touches a device.

`distributed.init` (training config): `auto` (default) initialises when a cluster is
configured or detected, else runs one process; `always` fails with a clear message when
none is found; `never` runs one process whatever the environment says. A cluster is:
- the config keys distributed.coordinator / num_processes / process_id, or the JAX_*
  variables (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID): passed on as given;
- a TPU pod slice with more than one worker (TPU_WORKER_HOSTNAMES / TPU_PROCESS_ADDRESSES,
  as GKE and the TPU VM runtime set them), a multi-slice run (MEGASCALE_COORDINATOR_ADDRESS),
  a SLURM job step with more than one task, an Open MPI job with more than one rank, or a
  Cloud TPU VM (whose workers JAX reads from the metadata server): `initialize()` with no
  arguments, JAX discovers the rest itself.
"""

from __future__ import annotations

import os
from typing import Mapping

from comet_jax.config import ConfigError

INITS = ("auto", "always", "never")
SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")


def _int(env: Mapping[str, str], key: str, default: int = 0) -> int:
    try:
        return int(env.get(key, "") or default)
    except ValueError:
        return default


def _on_cloud_tpu_vm() -> bool:
    try:
        from jax._src.cloud_tpu_init import running_in_cloud_tpu_vm  # JAX's own test, private
    except ImportError:
        return False
    return bool(running_in_cloud_tpu_vm)


def explicit_args(dist, env: Mapping[str, str]) -> dict | None:
    """initialize() arguments from the config keys or the JAX_* variables, or None."""
    coordinator = dist.coordinator or env.get("JAX_COORDINATOR_ADDRESS", "")
    num = dist.num_processes or _int(env, "JAX_NUM_PROCESSES")
    pid = dist.process_id if dist.process_id >= 0 else _int(env, "JAX_PROCESS_ID", -1)
    if not coordinator and num <= 1:
        return None
    return {"coordinator_address": coordinator or None, "num_processes": num or None,
            "process_id": pid if pid >= 0 else None}


def detect_cluster(env: Mapping[str, str], on_tpu_vm: bool = False) -> str | None:
    """What JAX will discover on its own here, in words; None when nothing is."""
    hosts = [h for h in (env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or "").split(",")
             if h.strip()]
    if len(hosts) > 1:
        return f"a TPU pod slice of {len(hosts)} workers (TPU_WORKER_HOSTNAMES)"
    if env.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return f"a multi-slice TPU run of {env.get('MEGASCALE_NUM_SLICES', '?')} slices (MEGASCALE_*)"
    if all(k in env for k in SLURM_VARS) and _int(env, "SLURM_NTASKS") > 1:
        return f"a SLURM job step of {env['SLURM_NTASKS']} tasks"
    if "OMPI_MCA_orte_hnp_uri" in env and _int(env, "OMPI_COMM_WORLD_SIZE") > 1:
        return f"an Open MPI job of {env['OMPI_COMM_WORLD_SIZE']} ranks"
    if on_tpu_vm:
        return "a Cloud TPU VM (workers from its metadata server)"
    return None


def plan(dist, env: Mapping[str, str] | None = None, on_tpu_vm: bool | None = None) -> tuple[dict | None, str]:
    """(initialize() keyword arguments, or None for a single process; why). Raises ConfigError
    for `always` with nothing to join."""
    env = os.environ if env is None else env
    mode = getattr(dist, "init", "auto")
    if mode not in INITS:
        raise ConfigError(f"distributed.init must be one of {', '.join(INITS)}, got {mode!r}")
    if mode == "never":
        return None, "distributed.init=never: one process"
    args = explicit_args(dist, env)
    if args is not None:
        return args, "the distributed.* keys / JAX_* variables"
    found = detect_cluster(env, _on_cloud_tpu_vm() if on_tpu_vm is None else on_tpu_vm)
    if found:
        return {}, found
    if mode == "always":
        raise ConfigError("distributed.init=always but no cluster was found: set distributed.coordinator "
                          "(host:port of process 0), distributed.num_processes and distributed.process_id (or "
                          "JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID), or run under a TPU pod, "
                          "SLURM or Open MPI launcher")
    return None, "no cluster found: one process"


def maybe_initialize(dist, log=print) -> bool:
    """Initialise the distributed runtime when `plan` says so, and log where this process
    stands (once). Returns whether it initialised."""
    import jax

    args, why = plan(dist)
    if args is not None:
        jax.distributed.initialize(**args)
    log(f"process {jax.process_index()} of {jax.process_count()} ({why}): {jax.local_device_count()} local, "
        f"{jax.device_count()} global {jax.devices()[0].platform} devices")
    return args is not None
