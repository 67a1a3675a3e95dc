"""comet-plan (comet_jax/compile/plan.py): the compiled memory plan of a training config."""

import importlib.util
import json
import shlex

import pytest

from comet_jax import build
from comet_jax.compile import plan, search
from comet_jax.compile.lower import base_vocab, memory_levers
from comet_jax.train.flops import param_count
from comet_jax.train.train_config import load_config
from comet_jax.train.train_config_checks import validate

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
    # optim.ema keeps a third parameter-sized array in the optimizer state (the train step a
    # plan compiles is the run's, EMA update included)
    rc, out, err = run(capsys, "--devices", "1", "--hbm-gb", "16", "train.batch_size=1", "optim.ema=0.99")
    assert rc == 0, err
    r = json.loads(out.splitlines()[-1])
    assert 16 * params_of() <= r["params_opt_bytes_per_device"] <= 16 * params_of() + 64


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
    assert rc == 0 and r["fits"] is False and "RESOURCE_EXHAUSTED" in r["error"] and "to fit, try: --search" in out
    # "HLO temporaries (100.11G)", read from the refusal into the table and the JSON
    assert r["temp_bytes_per_device"] > 90 * 2**30 and "total_bytes_per_device" not in r
    assert f"{r['temp_bytes_per_device'] / 1e9:.2f} GB per device (from the compiler's refusal" in out


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (requirements-dev.txt) is not installed")
def test_plan_reports_host_bytes_of_remat_offload_on_tpu(capsys):
    # measured: 1.70 MB of pinned host temporaries per chip (the saved step inputs), 0 with remat=full
    rc, out, err = run(capsys, "--target", "v5e:2x2", "mesh.fsdp=4", "train.batch_size=4", "model.remat=offload")
    r = json.loads(out.splitlines()[-1])
    assert rc == 0 and r["fits"] is True, err
    assert r["host_temp_bytes_per_device"] > 0 and "host (pinned)" in out


def test_levers_never_suggest_what_can_need_more_memory():
    cfg = load_config("configs/tiny_cpu.yaml", [*TINY, "mesh.fsdp=4", "train.batch_size=8"])
    levers = memory_levers(cfg)
    assert not any(x in " ".join(levers) for x in ("chunk_major", "mesh.tensor", "mesh.stage", "dots"))
    assert levers[0].startswith("model.remat=offload") and "optim.grad_accum=2 (half the micro-batch" in levers[1]
    assert plan.levers(cfg).startswith("to fit, try: --search")
    offload = load_config("configs/tiny_cpu.yaml", [*TINY, "model.remat=offload", "train.batch_size=1"])
    assert memory_levers(offload) == ["a smaller train.batch_size",
                                      "more chips (a larger topology, then a larger mesh.fsdp)"]


def test_search_orders_prunes_and_records_a_failed_compile():
    """The search's logic without compiling: a fake compiler that fails every pipelined layout
    (mesh.stage > 1) and fits the others except remat=dots at layer_major."""
    cfg = load_config("configs/tiny_cpu.yaml", [*TINY, "train.batch_size=4"])
    model, comet, _ = build.from_sections(cfg.model, cfg.comet, base_vocab(cfg))

    def compile_one(c):
        if c.mesh.stage > 1:
            raise RuntimeError("INTERNAL: pipeline lowering failed\nmore")
        big = c.model.remat == "dots" and c.model.schedule == "layer_major"
        return {"fits": not big, "total_bytes_per_device": 9e6 if big else 3e6, "step_s_at_mfu": 1.0}

    found = search.search(cfg, lambda o: load_config("configs/tiny_cpu.yaml", [*TINY, "train.batch_size=4", *o]),
                          compile_one, model, params_of(), 1.0, 4, 4, 6e6, 6, lambda m: None)
    # 4 devices: fsdp 4 (accum 1), fsdp 2 x stage 2 (accum 1, 2), stage 4 (accum 1, 2, 4); 2 schedules x 3 remats
    assert found["total"] == 36 and len(found["tried"]) == 6
    first = found["tried"][0][0]
    assert (first.stage, first.remat) == (1, "dots")  # the fastest estimate is compiled first
    rows = search.ranked(found["tried"], {}, lambda c: c.cost)
    fits = [r for r in rows if r["fits"]]
    assert fits and all("mesh.stage=1" in r["overrides"] for r in fits)
    assert [r["step_s_est"] for r in fits] == sorted(r["step_s_est"] for r in fits)
    assert "model.remat=dots" in fits[0]["overrides"] and "model.remat=full" in fits[-1]["overrides"]
    failed = [r for r in rows if r.get("error")]
    assert failed and all(not r["fits"] and "mesh.stage=1" not in r["overrides"] for r in failed)
    assert failed[0]["error"] == "INTERNAL: pipeline lowering failed"
    # a failed pipeline sends the layouts of its mesh.stage to the back: after stage 2 fails,
    # stage 1 is compiled until the rest of it is answered (offload and chunk_major full: leaner
    # than layouts that fit, never faster), then stage 4 (fails), then stage 2 again
    assert [c.stage for c, _ in found["tried"]] == [1, 2, 1, 1, 4, 2]
    # nothing compiled whose answer an earlier compile gave (at one layout: heavier than one that
    # did not fit, or leaner than one that fits at the same speed)
    assert all(search.answered_by(c, found["tried"][:i]) is None for i, (c, _) in enumerate(found["tried"]))
    assert found["skipped"] > 0 and found["untried"] + found["skipped"] + 6 == 36


def test_plan_search_lists_what_fits_fastest_first(capsys):
    # CPU compiler, 0.006 GB of memory: measured 9.1 MB (remat dots) and 7.6 MB (layer_major
    # offload) do not fit at fsdp 4; chunk_major 3.0 MB and the stage-2 pipeline 4.0 MB do
    rc, out, err = run(capsys, "--target", "h100", "--devices", "4", "--hbm-gb", "0.006", "--search",
                       "--search-limit", "4", "train.batch_size=4")
    assert rc == 0, err
    r = json.loads(out.splitlines()[-1])
    rows = r["search"]
    assert len(rows) == r["search_compiled"] == 4 and "[4/4]" in err and "layouts that fit, fastest first" in out
    fits = [x for x in rows if x["fits"]]
    assert fits and any(not x["fits"] and x["total_bytes_per_device"] > 6e6 for x in rows)
    assert [x["step_s_est"] for x in fits] == sorted(x["step_s_est"] for x in fits)
    assert r["fits"] is True and r["overrides"] == fits[0]["overrides"] and r["step_s_est"] == fits[0]["step_s_est"]
    for x in rows:  # each row's overrides, pasted after the same command, is a valid config
        cfg = load_config("configs/tiny_cpu.yaml", [*TINY, "train.batch_size=4", *shlex.split(x["overrides"])])
        validate(cfg)
        assert cfg.mesh.fsdp * cfg.mesh.tensor * cfg.mesh.stage == 4 and cfg.train.batch_size == 4
