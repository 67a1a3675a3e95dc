"""Ahead-of-time lowering (comet_jax/aot.py) and its command, comet-lower (comet_jax/compile/lower.py)."""

import importlib.util
import json

import pytest

from comet_jax import aot
from comet_jax.compile import lower
from comet_jax.config import ConfigError

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
TINY = ["model.hidden_size=64", "model.intermediate_size=96", "model.num_layers=2", "model.num_heads=2",
        "model.num_kv_heads=1", "data.seq_len=256", "data.curriculum=[]", "train.batch_size=2"]


def run(capsys, *argv):
    rc = lower.main(["--config", "configs/tiny_cpu.yaml", *argv, *TINY])
    out = capsys.readouterr()
    return rc, [json.loads(line) for line in out.out.splitlines()], out.err


def test_hlo_stats_counts_custom_calls_callbacks_and_f64():
    hlo = ('%a = f32[8]{0} custom-call(f32[8] %x), custom_call_target="tpu_custom_call"\n'
           '%b = f64[2]{0} custom-call(), custom_call_target="xla_ffi_python_cpu_callback"\n'
           '%c = f32[8]{0} custom-call(), custom_call_target="tpu_custom_call"')
    assert aot.hlo_stats(hlo) == {"custom_calls": {"tpu_custom_call": 2, "xla_ffi_python_cpu_callback": 1},
                                  "host_callbacks": 1, "f64_ops": 1}
    mlir = ('%0 = stablehlo.custom_call @tpu_custom_call(%arg0) : (tensor<8xf32>) -> tensor<8xf32>\n'
            '%1 = stablehlo.add %2, %3 : tensor<4x2xf64>')
    assert aot.hlo_stats(mlir, mlir=True) == {"custom_calls": {"tpu_custom_call": 1}, "host_callbacks": 0,
                                              "f64_ops": 1}


def test_fit_mesh_scales_fsdp_then_data_and_keeps_tensor_and_stage():
    assert aot.fit_mesh(1, 8, 1, 1, 8) == ((1, 8, 1, 1), "")
    shape, note = aot.fit_mesh(2, 8, 2, 1, 8)
    assert shape == (2, 2, 2, 1) and "scaled down" in note
    assert aot.fit_mesh(1, 2, 1, 1, 8)[0] == (1, 2, 1, 1)  # smaller: the first devices
    with pytest.raises(ConfigError, match="mesh.tensor"):
        aot.fit_mesh(1, 1, 4, 2, 4)


def test_lower_compiles_for_cpu_and_lowers_for_cuda_and_tpu(capsys):
    rc, lines, err = run(capsys, "--platform", "cpu", "mesh.fsdp=2")
    assert rc == 0, err
    assert [r["function"] for r in lines] == ["train_step", "prefill_closed", "decode_step"]
    train = lines[0]
    assert train["compiled"] and train["mesh"]["fsdp"] == 2
    assert train["memory"]["temp_bytes"] > 0 and train["host_callbacks"] == 0 and train["f64_ops"] == 0
    rc, lines, _ = run(capsys, "--platform", "cuda", "--functions", "train")
    assert rc == 0 and lines[0]["compiled"] is False and lines[0]["attention"] == "xla"
    rc, lines, _ = run(capsys, "--platform", "tpu", "--attention", "splash", "--functions", "train,decode")
    assert rc == 0 and all(r["custom_calls"].get("tpu_custom_call", 0) > 0 for r in lines)
    assert all(r["host_callbacks"] == 0 and r["f64_ops"] == 0 for r in lines)


def test_lower_refuses_bad_input(capsys):
    assert lower.main(["--config", "configs/tiny_cpu.yaml", "mesh.fsdp=3", "train.batch_size=2"]) == 2
    assert "mesh.data*mesh.fsdp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        lower.main(["--config", "configs/tiny_cpu.yaml", "--topology", "v5e:2x2", "--platform", "cuda"])


def test_shipped_large_configs_carry_their_shape():
    from comet_jax import build
    from comet_jax.train.train_config import load_config

    for path, layers, vocab in (("configs/llama3_8b_comet_32k.yaml", 32, 128256),
                                ("configs/qwen3_comet_32k.yaml", 36, 151936)):
        cfg = load_config(path)
        model, comet, source = build.from_sections(cfg.model, cfg.comet)
        assert source == "the config's model section" and model.num_layers == layers
        assert model.real_vocab == vocab + 2 + comet.global_size and model.vocab_size % 256 == 0


@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (requirements-dev.txt) is not installed")
def test_lower_compiles_splash_for_a_real_tpu_topology(capsys):
    rc, lines, err = run(capsys, "--platform", "tpu", "--topology", "v5e:2x2", "--functions", "train",
                         "model.dtype=bfloat16", "mesh.fsdp=2")
    assert rc == 0, err
    [train] = lines
    assert train["compiled"] and train["attention"] == "splash" and train["custom_calls"]["tpu_custom_call"] > 0
    assert train["mesh"] == {"data": 1, "fsdp": 2, "tensor": 1, "stage": 1}
    assert 0 < train["memory"]["total_bytes"] < 16e9 and train["f64_ops"] == 0 and train["host_callbacks"] == 0
