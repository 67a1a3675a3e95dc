"""Ahead-of-time lowering and compiling for a machine we do not have (comet-lower, comet-plan).

Everything here is abstract: parameters, optimizer state, batches and decode states are
`jax.ShapeDtypeStruct`s with shardings on a mesh, so an 8B model costs no memory. With libtpu
installed, `tpu_devices("v5p:2x2x2")` gives the devices of a real TPU topology and `compile`
runs the TPU compiler for them (its `memory_analysis()` is per chip). Without it, `export`
lowers for any platform with `jax.export` (StableHLO; nothing compiled).
"""

from __future__ import annotations

import math
import os
import re
import time
from collections import Counter
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from comet_jax import layout
from comet_jax.config import CometConfig, ConfigError, ModelConfig
from comet_jax.model.init import init_params
from comet_jax.parallel import sharding

# libtpu looks for a TPU VM's metadata server and worker list when it loads, and takes a
# lockfile so that one process owns the chips; a process that only compiles for a topology
# description needs none of that (these change no result).
_LIBTPU_ENV = {"TPU_SKIP_MDS_QUERY": "1", "TPU_WORKER_HOSTNAMES": "localhost", "TPU_ACCELERATOR_TYPE": "v5p-8",
               "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}


class Unavailable(RuntimeError):
    """The compiler asked for is not installed here."""


def tpu_devices(topology: str, slices: int = 1) -> list:
    """The devices of a TPU topology such as "v5e:4x4" or "v5p:2x2x2" (needs libtpu); with
    `slices` > 1, that many such slices (each device carries its `slice_index`)."""
    for k, v in _LIBTPU_ENV.items():
        os.environ.setdefault(k, v)
    from jax.experimental import topologies

    try:
        kwargs = {"num_slices": slices} if slices > 1 else {}
        return list(topologies.get_topology_desc(topology, "tpu", **kwargs).devices)
    except Exception as e:  # no plugin: RuntimeError / ValueError depending on the jax version
        text = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "tpu" in text.lower() and ("not found" in text.lower() or "unknown backend" in text.lower()
                                      or "plugin" in text.lower() or "no module" in text.lower()):
            raise Unavailable(f"the TPU compiler (libtpu) is not installed: pip install 'jax[tpu]=={jax.__version__}' "
                              f"({text})") from None
        raise ConfigError(f"--topology {topology}: {text} (examples: v5e:2x2, v5e:4x4, v5p:2x2x2, v6e:2x2, v4:2x2x2)") \
            from None


def fit_mesh(data: int, fsdp: int, tensor: int, stage: int, n: int) -> tuple[tuple[int, int, int, int], str]:
    """The mesh (data, fsdp, tensor, stage) used on `n` devices and a note saying how it was
    changed: a larger mesh is scaled down by shrinking fsdp, then data (tensor and stage are
    kept: they decide the program's shape); a smaller one is kept and uses the first devices."""
    want = data * fsdp * tensor * stage
    if want <= n:
        return (data, fsdp, tensor, stage), "" if want == n else f"the mesh uses {want} of the {n} devices"
    if n % (tensor * stage):
        raise ConfigError(f"mesh.tensor*mesh.stage = {tensor * stage} does not divide the {n} devices of the target; "
                          "lower mesh.tensor or mesh.stage")
    rest = n // (tensor * stage)
    d = math.gcd(data, rest)
    shape = (d, rest // d, tensor, stage)
    return shape, (f"mesh data*fsdp*tensor*stage = {want} scaled down to the {n} devices of the target: "
                   f"data={shape[0]} fsdp={shape[1]} tensor={tensor} stage={stage}")


def _spec_for_opt(params_specs: dict[tuple[str, ...], tuple[tuple[int, ...], P]]):
    """An optimizer-state leaf takes the spec of the parameter its path ends with (Adam's moments
    mirror the parameter tree); counts and other scalars are replicated."""
    def spec(path, x):
        names = tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)
        for i in range(len(names)):
            hit = params_specs.get(names[i:])
            if hit is not None and hit[0] == tuple(x.shape):
                return hit[1]
        return P()
    return spec


def abstract(tree: Any, specs: Any, mesh) -> Any:
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, s)),
                        tree, specs, is_leaf=lambda x: isinstance(x, P))


def abstract_params(model: ModelConfig, comet: CometConfig, mesh, dtype: str | None = None,
                    rules: dict[str, str] | None = None) -> Any:
    """The parameter tree as ShapeDtypeStructs sharded by the sharding rules (storage dtype
    `dtype`, default the model's param_dtype)."""
    shapes = jax.eval_shape(lambda: init_params(model, comet, jax.random.key(0)))
    if dtype is not None:
        shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, jnp.dtype(dtype)), shapes)
    return abstract(shapes, sharding.param_specs(shapes, mesh, rules), mesh)


def abstract_train_state(params: Any, tx, mesh) -> dict:
    """{params, opt_state, step} as the trainer holds them; optimizer moments follow their parameter."""
    flat = {tuple(str(getattr(k, "key", k)) for k in path): (tuple(x.shape), x.sharding.spec)
            for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    opt = jax.eval_shape(tx.init, params)
    opt = abstract(opt, jax.tree_util.tree_map_with_path(_spec_for_opt(flat), opt), mesh)
    step = jax.ShapeDtypeStruct((), jnp.int32, sharding=NamedSharding(mesh, P()))
    return {"params": params, "opt_state": opt, "step": step}


def abstract_batch(mode: str, comet: CometConfig, batch: int, seq_len: int, num_chunks: int, mesh,
                   stage_axis: bool = False) -> dict:
    """A training batch of the data pipeline's shapes and dtypes, split over data x fsdp."""
    if mode == "comet":
        built = layout.build([np.zeros(0, np.int32)] * batch, [[]] * batch, comet, num_chunks=num_chunks).as_dict()
        arrays, axis = {k: built[k] for k in ("tokens", "valid", "positions", "labels", "first", "live")}, 1
    else:
        arrays = {"tokens": np.zeros((batch, seq_len), np.int32), "lengths": np.zeros((batch,), np.int32),
                  "labels": np.zeros((batch, seq_len), np.int32)}
        axis = 0
    chunk_axis = 0 if stage_axis else None
    return {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=NamedSharding(
                mesh, sharding.batch_spec(axis, v.ndim, chunk_axis) if v.ndim > axis else P()))
            for k, v in arrays.items()}


def batch_sharded(tree: Any, batch: int, mesh) -> Any:
    """Shard the first axis of each leaf whose size is `batch` over data x fsdp (where that
    divides it); other leaves are replicated. For decode states, whose batch axis sits after
    the stacked layer axis in some leaves and first in others."""
    dp = mesh.shape["data"] * mesh.shape["fsdp"]

    def one(x):
        spec: list = [None] * x.ndim
        if batch % dp == 0 and batch in x.shape:
            spec[x.shape.index(batch)] = sharding.BATCH_AXES
        return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, P(*spec)))

    return jax.tree.map(one, tree)


# ------------------------------------------------------------------------------ inspecting

_HLO_TARGET = re.compile(r'custom_call_target="([^"]+)"')
_MLIR_TARGET = re.compile(r"stablehlo\.custom_call\s+@([\w.$-]+)")
_HLO_F64 = re.compile(r"\bf64\[")
_MLIR_F64 = re.compile(r"(?:x|<)f64>")


def hlo_stats(text: str, mlir: bool = False) -> dict[str, Any]:
    """custom-call targets (name -> count), host callbacks and float64 values of a compiled HLO
    (or, `mlir`, a StableHLO) module's text."""
    targets = Counter((_MLIR_TARGET if mlir else _HLO_TARGET).findall(text))
    return {"custom_calls": dict(sorted(targets.items())),
            "host_callbacks": sum(n for t, n in targets.items() if "callback" in t.lower()),
            "f64_ops": len((_MLIR_F64 if mlir else _HLO_F64).findall(text))}


def memory_stats(compiled) -> dict[str, int] | None:
    """Per-device bytes of a compiled program (the compiler's own figures). total_bytes is device
    memory (HBM); host_*_bytes are the pinned_host buffers beside it (model.remat=offload keeps
    saved step inputs there; 0 where the compiler reports no host figures)."""
    m = compiled.memory_analysis()
    if m is None:
        return None
    out = {f"{k}_bytes": int(getattr(m, f"{k}_size_in_bytes")) for k in ("argument", "output", "temp", "alias")}
    out["total_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    for k in ("temp", "argument", "output", "alias"):  # older jaxlibs and the CPU client may lack them
        out[f"host_{k}_bytes"] = int(getattr(m, f"host_{k}_size_in_bytes", 0) or 0)
    return out


# The TPU compiler's refusals print sizes with binary units: "15.75G" of a v5e's 16 GiB is what
# is left after the 256 MiB it reserves ("reserved 530.00M" + "15.48G" = 16G on a v3 core).
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = r"([0-9.]+)([KMGT]?)B?"
# (pattern, key it fills): the first group of each is the figure
_REFUSALS = (
    # "... the total memory required for HLO temporaries (66.04G) exceeds available HBM (15.75G)."
    (re.compile(r"HLO temporaries \(" + _SIZE + r"\)"), "temp_bytes"),
    # "Ran out of memory in memory space hbm. Used 21.95G of 15.48G hbm." (the program: HLO temp
    # plus a few MB of scoped / global buffers)
    (re.compile(r"memory space hbm\. Used " + _SIZE + " of"), "temp_bytes"),
    # "Total hbm usage >= 22.47G:" (program + arguments + reserved)
    (re.compile(r"Total hbm usage >= " + _SIZE), "total_bytes"),
    # the capacity the compiler counted against
    (re.compile(r"exceeds available HBM \(" + _SIZE + r"\)"), "hbm_bytes"),
    (re.compile(r"Used [0-9.]+[KMGT]?B? of " + _SIZE + " hbm"), "hbm_bytes"),
)


def refusal_figures(text: str) -> dict[str, int]:
    """The byte figures in an out-of-memory refusal of the TPU compiler: temp_bytes (what the
    program needs), total_bytes (only where the message gives the total) and hbm_bytes (the
    capacity it was checked against); {} for a message without figures."""
    out: dict[str, int] = {}
    for pattern, key in _REFUSALS:
        hit = pattern.search(text)
        if hit and key not in out:
            out[key] = round(float(hit.group(1)) * _UNITS[hit.group(2)])
    return out


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    lines = [ln for ln in text.splitlines() if "RESOURCE_EXHAUSTED" in ln] or text.splitlines() or [type(e).__name__]
    return lines[0][:500]


def out_of_memory(e: BaseException) -> bool:
    return "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e)


def compile_fn(fn: Callable, args: tuple, kwargs: dict | None = None) -> dict[str, Any]:
    """Lower and compile a jitted `fn` for the devices its abstract arguments are sharded over.
    Returns {compiled, compile_s, memory, custom_calls, host_callbacks, f64_ops} or, when the
    compiler runs out of device memory, {compiled: False, fits: False, error, memory} with the
    figures of its message (`refusal_figures`: temp_bytes, and total_bytes where given)."""
    t0 = time.perf_counter()
    lowered = fn.lower(*args, **(kwargs or {}))
    try:
        compiled = lowered.compile()
    except Exception as e:  # noqa: BLE001 - XlaRuntimeError has no stable import path
        if not out_of_memory(e):
            raise
        return {"compiled": False, "fits": False, "compile_s": round(time.perf_counter() - t0, 1),
                "error": first_line(e), "memory": refusal_figures(str(e))}
    out = {"compiled": True, "compile_s": round(time.perf_counter() - t0, 1), "memory": memory_stats(compiled)}
    out.update(hlo_stats(compiled.as_text()))
    cost = compiled.cost_analysis()
    if isinstance(cost, list):
        cost = cost[0] if cost else None
    if cost and "flops" in cost:
        out["hlo_flops"] = float(cost["flops"])  # the compiler counts a loop body once
    return out


def export_fn(fn: Callable, args: tuple, platform: str, kwargs: dict | None = None) -> dict[str, Any]:
    """Lower a jitted `fn` for `platform` with jax.export (no compiler needed)."""
    from jax import export

    t0 = time.perf_counter()
    exp = export.export(fn, platforms=(platform,))(*args, **(kwargs or {}))
    out = {"compiled": False, "lower_s": round(time.perf_counter() - t0, 1)}
    out.update(hlo_stats(exp.mlir_module(), mlir=True))
    return out

