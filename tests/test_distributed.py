"""Multi-host start-up (comet_jax/parallel/distributed.py): what `distributed.init` does in
faked cluster environments. The real 2-process run is tests/test_train.py."""

import pytest

from comet_jax.config import ConfigError
from comet_jax.parallel.distributed import detect_cluster, plan
from comet_jax.train.train_config import DistributedSection

SLURM = {"SLURM_JOB_ID": "7", "SLURM_STEP_NODELIST": "n[1-2]", "SLURM_NTASKS": "2", "SLURM_PROCID": "0",
         "SLURM_LOCALID": "0"}


@pytest.mark.parametrize("env, words", [
    ({"TPU_WORKER_HOSTNAMES": "10.0.0.1,10.0.0.2,10.0.0.3,10.0.0.4"}, "TPU pod slice of 4 workers"),
    ({"TPU_PROCESS_ADDRESSES": "a:8476,b:8476"}, "TPU pod slice of 2 workers"),
    ({"MEGASCALE_COORDINATOR_ADDRESS": "10.0.0.9", "MEGASCALE_NUM_SLICES": "2"}, "multi-slice TPU run of 2"),
    (SLURM, "SLURM job step of 2 tasks"),
    ({"OMPI_MCA_orte_hnp_uri": "1;tcp://10.0.0.1:3491", "OMPI_COMM_WORLD_SIZE": "4"}, "Open MPI job of 4"),
])
def test_clusters_are_detected(env, words):
    assert words in detect_cluster(env)
    args, why = plan(DistributedSection(), env, on_tpu_vm=False)
    assert args == {} and words in why  # initialize() with no arguments: JAX discovers the rest


@pytest.mark.parametrize("env", [
    {}, {"TPU_WORKER_HOSTNAMES": "localhost"}, {**SLURM, "SLURM_NTASKS": "1"},
    {k: v for k, v in SLURM.items() if k != "SLURM_STEP_NODELIST"},  # an allocation, not a job step
    {"OMPI_MCA_orte_hnp_uri": "1;tcp://x:1", "OMPI_COMM_WORLD_SIZE": "1"},
])
def test_single_machines_run_one_process(env):
    assert detect_cluster(env) is None
    assert plan(DistributedSection(), env, on_tpu_vm=False) == (None, "no cluster found: one process")


def test_a_cloud_tpu_vm_initialises_from_its_metadata():
    args, why = plan(DistributedSection(), {}, on_tpu_vm=True)
    assert args == {} and "Cloud TPU VM" in why


def test_explicit_keys_and_jax_variables_are_passed_on():
    args, _ = plan(DistributedSection(coordinator="10.0.0.1:1234", num_processes=2, process_id=1), {},
                   on_tpu_vm=False)
    assert args == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    env = {"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_NUM_PROCESSES": "4", "JAX_PROCESS_ID": "3",
           "TPU_WORKER_HOSTNAMES": "a,b"}
    assert plan(DistributedSection(), env, on_tpu_vm=False)[0] == {"coordinator_address": "h:1", "num_processes": 4,
                                                                   "process_id": 3}


def test_always_and_never():
    with pytest.raises(ConfigError, match="distributed.init=always but no cluster was found"):
        plan(DistributedSection(init="always"), {}, on_tpu_vm=False)
    assert plan(DistributedSection(init="always"), SLURM, on_tpu_vm=False)[0] == {}
    assert plan(DistributedSection(init="never"), SLURM, on_tpu_vm=True)[0] is None
    with pytest.raises(ConfigError, match="distributed.init must be one of"):
        plan(DistributedSection(init="sometimes"), {}, on_tpu_vm=False)
