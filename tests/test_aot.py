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
    assert train["memory"]["host_temp_bytes"] == 0  # the CPU compiler has no pinned host memory space
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


# Refusals of the TPU compiler, verbatim. Seen here (libtpu, jax 0.10.2, `comet-plan --target
# v5e:2x2 mesh.fsdp=4 train.batch_size=4`): Llama-3-8B CoMeT at 32k tokens, and the tiny config at
# train.batch_size=65536 model.remat=none. Not seen here (a real chip refusing, from a public
# report: github.com/erfanzar/EasyDeL/issues/166, a v4): the "memory space hbm" form, which
# also gives the total.
REFUSAL_8B = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
              "(66.04G) exceeds available HBM (15.75G).")
REFUSAL_TINY = ("RESOURCE_EXHAUSTED: Ran out of memory on HBM, the total memory required for HLO temporaries "
                "(325.03G) exceeds available HBM (15.75G).")
REFUSAL_HBM_SPACE = ("RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. "
                     "Used 63.80G of 30.75G hbm. Exceeded hbm capacity by 33.05G.\n\nTotal hbm usage >= 65.05G:\n"
                     "    reserved          1.25G\n    program          63.80G\n    arguments            0B\n")


def test_refusal_figures_read_the_compilers_messages():
    G = 2**30  # the compiler's G: 15.75G of a v5e's 16 GiB, 30.75G + 1.25G reserved of a v4's 32 GiB
    assert aot.refusal_figures(REFUSAL_8B) == {"temp_bytes": round(66.04 * G), "hbm_bytes": round(15.75 * G)}
    assert aot.refusal_figures(REFUSAL_TINY)["temp_bytes"] == round(325.03 * G)
    # "Used" is the program (temp_bytes); "Total hbm usage" adds arguments and the reserve (total_bytes)
    assert aot.refusal_figures(REFUSAL_HBM_SPACE) == {"temp_bytes": round(63.80 * G), "total_bytes": round(65.05 * G),
                                                      "hbm_bytes": round(30.75 * G)}
    assert aot.refusal_figures("RESOURCE_EXHAUSTED: Ran out of memory in memory space vmem.") == {}


def test_compile_fn_returns_a_refusals_figures_and_raises_other_errors():
    class Lowered:
        def __init__(self, error):
            self.error = error

        def compile(self):
            raise self.error

    class Fn:
        def __init__(self, error):
            self.error = error

        def lower(self, *args, **kwargs):
            return Lowered(self.error)

    r = aot.compile_fn(Fn(RuntimeError(REFUSAL_8B + "\n\nLargest program allocations...")), ())
    assert r["compiled"] is False and r["fits"] is False and r["error"] == REFUSAL_8B
    assert r["memory"]["temp_bytes"] == round(66.04 * 2**30) and "total_bytes" not in r["memory"]
    with pytest.raises(ValueError):
        aot.compile_fn(Fn(ValueError("not a memory problem")), ())


def test_memory_stats_reports_host_bytes_beside_hbm():
    class Analysis:  # what compiled.memory_analysis() gives on TPU (figures of a remat=offload step)
        argument_size_in_bytes, output_size_in_bytes, temp_size_in_bytes, alias_size_in_bytes = 100, 50, 1000, 40
        host_temp_size_in_bytes, host_argument_size_in_bytes = 1703936, 0

    class Compiled:
        def memory_analysis(self):
            return Analysis()

    m = aot.memory_stats(Compiled())
    assert m["total_bytes"] == 1110 and m["host_temp_bytes"] == 1703936
    assert m["host_argument_bytes"] == 0 and m["host_output_bytes"] == 0  # absent on the object: 0
