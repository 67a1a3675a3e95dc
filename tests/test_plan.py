"""comet-plan (comet_jax/compile/plan.py): the compiled memory plan of a training config."""

import importlib.util
import json

import pytest

from comet_jax import build
from comet_jax.compile import plan
from comet_jax.compile.lower import base_vocab
from comet_jax.train.flops import param_count
from comet_jax.train.train_config import load_config

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TINY = ["model.hidden_size=64", "model.intermediate_size=96", "model.num_layers=2", "model.num_heads=2",
        "model.num_kv_heads=1", "data.seq_len=256", "data.curriculum=[]"]


def run(capsys, *argv):
    rc = plan.main(["--config", "configs/tiny_cpu.yaml", *argv, *TINY])
    out = capsys.readouterr()
    return rc, out.out, out.err


def params_of(*overrides):
    cfg = load_config("configs/tiny_cpu.yaml", [*TINY, *overrides])
    model, comet, _ = build.from_sections(cfg.model, cfg.comet, base_vocab(cfg))
    return param_count(model, comet)


def test_plan_on_fake_devices_reports_exact_parameter_bytes(capsys):
    rc, out, err = run(capsys, "--devices", "4", "--hbm-gb", "16", "mesh.fsdp=4", "train.batch_size=4")
    assert rc == 0, err
    r = json.loads(out.splitlines()[-1])
    n = params_of()
    assert r["params"] == n and r["devices"] == 4 and r["mesh"]["fsdp"] == 4 and r["compiler"] == "cpu"
    # float32 weights + two Adam moments, a quarter on each device (norm scales and the small
    # memory nets are kept whole on every device: 11% more at this tiny size)
    assert n * 12 / 4 <= r["params_opt_bytes_per_device"] <= n * 12 / 4 * 1.2
    assert r["temp_bytes_per_device"] > 0 and r["fits"] is True and r["tokens_per_step"] == 4 * 256
    assert r["flops_per_step"] > r["hlo_flops"] > 0  # the compiler counts the layer scan's body once
    assert "params + optimizer" in out and "fits" in out


def test_plan_on_one_device_counts_weights_and_both_adam_moments(capsys):
    rc, out, err = run(capsys, "--devices", "1", "--hbm-gb", "16", "train.batch_size=1")
    r = json.loads(out.splitlines()[-1])
    assert rc == 0, err
    assert 12 * params_of() <= r["params_opt_bytes_per_device"] <= 12 * params_of() + 64  # + the step counts


def test_plan_searches_down_to_a_batch_that_fits(capsys):
    # measured: batch 4 needs 8.8 MB per device, batch 2 4.9 MB
    rc, out, err = run(capsys, "--devices", "2", "--hbm-gb", "0.007", "mesh.fsdp=2", "train.batch_size=4",
                       "--search-batch")
    r = json.loads(out.splitlines()[-1])
    assert rc == 0 and r["fits"] is True and r["batch_size"] == 2 and r["largest_batch_that_fits"] == 2
    assert "batch 2: fits" in err


def test_plan_refuses_a_mesh_that_does_not_match_the_target(capsys):
    rc, _, err = run(capsys, "--devices", "4", "mesh.fsdp=2", "train.batch_size=2")
    assert rc == 2 and "mesh.fsdp=4" in err
    with pytest.raises(SystemExit):
        plan.main(["--config", "configs/tiny_cpu.yaml", "--target", "h100"])  # a GPU preset needs --devices


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (requirements-dev.txt) is not installed")
def test_plan_compiles_for_a_tpu_topology_and_reports_a_refusal(capsys):
    rc, out, err = run(capsys, "--target", "v5e:2x2", "mesh.fsdp=4", "train.batch_size=4", "model.dtype=bfloat16")
    assert rc == 0, err
    r = json.loads(out.splitlines()[-1])
    assert r["compiler"] == "tpu" and r["fits"] is True and r["hbm_gb_per_device"] == 15.75
    assert r["step_s_at_mfu"] > 0
    # far too large a batch for a v5e chip (100 GB of temporaries): the TPU compiler refuses
    rc, out, _ = run(capsys, "--target", "v5e:2x2", "mesh.fsdp=4", "train.batch_size=65536", "model.dtype=bfloat16",
                     "model.remat=none")
    r = json.loads(out.splitlines()[-1])
    assert rc == 0 and r["fits"] is False and "RESOURCE_EXHAUSTED" in r["error"] and "to fit, try" in out
