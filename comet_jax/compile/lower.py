"""Does the training config's train step (and its inference steps) compile for the target?

    comet-lower --config configs/llama3_8b_comet_32k.yaml --platform tpu --topology v5p:2x2x2
    comet-lower --config configs/tiny_cpu.yaml --platform cuda     # lowered only

Builds the jitted train step, the closed-chunk prefill and the one-token decode step with the
config's real shapes as abstract values (nothing is allocated, no checkpoint is needed: a
`model.init` directory that exists gives the shape, otherwise the model section does). With
`--topology` (needs libtpu: `pip install "jax[tpu]==<jax version>"`, in requirements-dev.txt)
each is compiled by the TPU compiler for that topology on the config's mesh (scaled down to its
chip count when larger: fsdp first, then data); `--platform cpu` compiles for this machine's
CPU devices; otherwise each is lowered with `jax.export` for the platform. One JSON line per
function: function, platform, compiled, custom_calls (target -> count: `tpu_custom_call` is a
Pallas kernel such as splash attention), host_callbacks, f64_ops, and when compiled the
per-device bytes of `memory_analysis()`. Exit 0 when every function compiled (or lowered),
3 when the compiler ran out of device memory (the figure it reported is in the line), 2 on a
bad config. Run as a command (comet-lower, python -m comet_jax.compile.lower), it uses the CPU
platform with 8 fake devices unless JAX_PLATFORMS / XLA_FLAGS say otherwise.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from comet_jax.config import ATTENTION_HELP, ConfigError
from comet_jax.train.train_config import config_parser
from comet_jax.train.train_config_checks import load_valid

PLATFORMS = ("tpu", "cuda", "cpu")
EXIT_OOM = 3


def parse_args(argv=None):
    ap = config_parser("comet-lower", __doc__)
    ap.add_argument("--platform", choices=PLATFORMS, default="tpu", help="target platform (default tpu)")
    ap.add_argument("--topology", help="TPU topology to compile for, e.g. v5e:2x2, v5p:2x2x2 (needs libtpu)")
    ap.add_argument("--attention", help=f"override model.attention; {ATTENTION_HELP}")
    ap.add_argument("--functions", default="train,prefill,decode",
                    help="which of train, prefill, decode to build (comma-separated; default all)")
    ap.add_argument("--decode-batch", type=int, default=0,
                    help="batch of the prefill and decode steps (default: train.batch_size)")
    ap.add_argument("--prefill-chunks", type=int, default=8,
                    help="closed chunks per prefill call (the Generator's block, default 8)")
    args = ap.parse_intermixed_args(argv)
    if args.topology and args.platform != "tpu":
        ap.error("--topology is a TPU topology; use it with --platform tpu")
    bad = set(args.functions.split(",")) - {"train", "prefill", "decode"}
    if bad:
        ap.error(f"--functions: unknown {', '.join(sorted(bad))}; choose from train, prefill, decode")
    if args.attention:
        args.overrides = [*args.overrides, f"model.attention={args.attention}"]
    return args


def base_vocab(cfg) -> int | None:
    """The tokenizer's vocabulary when a model trained from scratch takes its size from it."""
    if cfg.model.init != "scratch" or cfg.model.vocab_size:
        return None
    from comet_jax.train.run_setup import load_tokenizer

    return load_tokenizer(cfg).get_vocab_size()


def devices_for(args):
    """(devices, how they were obtained, compile?)"""
    import jax

    from comet_jax import aot

    if args.topology:
        return aot.tpu_devices(args.topology), f"TPU topology {args.topology}", True
    return jax.devices("cpu"), f"{jax.device_count('cpu')} CPU devices of this machine", args.platform == "cpu"


def build_functions(cfg, model, comet, mesh, wanted: set[str], decode_batch: int, prefill_chunks: int):
    """[(name, jitted function, args, kwargs)] for the requested functions."""
    from functools import partial

    import jax
    import jax.numpy as jnp

    from comet_jax import aot
    from comet_jax.chunking import PlannerMix
    from comet_jax.data.pipeline import num_chunks_for
    from comet_jax.model import decode
    from comet_jax.model.comet import stacked_memory
    from comet_jax.train.optim import optimizer_for
    from comet_jax.train.train_step import make_train_step

    out = []
    mode, stages = cfg.comet.mode, cfg.mesh.stage
    if "train" in wanted:
        params = aot.abstract_params(model, comet, mesh, rules=cfg.mesh.rules)
        tx, schedule = optimizer_for(params, cfg.optim, cfg.train.steps)
        state = aot.abstract_train_state(params, tx, mesh)
        planners = PlannerMix(weights=dict(cfg.comet.planners), min_size=cfg.comet.min_chunk,
                              boundary_ids=tuple(cfg.comet.boundary_ids))
        n = num_chunks_for(cfg.data.seq_len, comet, planners, stages)
        batch = aot.abstract_batch(mode, comet, cfg.train.batch_size, cfg.data.seq_len, n, mesh, stages > 1)
        fn = make_train_step(tx, schedule, model=model, comet=comet, mode=mode, schedule=cfg.model.schedule,
                             remat=cfg.model.remat, grad_accum=cfg.optim.grad_accum,
                             state_shardings=jax.tree.map(lambda x: x.sharding, state),
                             pipeline_mesh=mesh if stages > 1 else None)
        out.append(("train_step", fn, (state, batch), {}))
    if not wanted & {"prefill", "decode"}:
        return out
    b = decode_batch or cfg.train.batch_size
    params = aot.abstract_params(model, comet, mesh, dtype=model.dtype, rules=cfg.mesh.rules)  # cast once
    i32 = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)  # noqa: E731
    flags = jax.ShapeDtypeStruct((b,), jnp.bool_)
    if mode == "comet":
        c = comet.chunk_size
        mems = aot.batch_sharded(jax.eval_shape(lambda: stacked_memory(b, model, comet)), b, mesh)
        if "prefill" in wanted:
            text = aot.batch_sharded(i32(prefill_chunks, b, c), b, mesh)
            out.append(("prefill_closed", decode.prefill_closed, (params, mems, text, i32(), i32(b)),
                        {"model": model, "comet": comet}))
        if "decode" in wanted:
            state, _ = jax.eval_shape(partial(decode.open_prompt, model=model, comet=comet), params, mems, i32(b, c),
                                      i32(b), flags)
            step = jax.jit(partial(decode.comet_feed, model=model, comet=comet), donate_argnums=1)
            out.append(("decode_step", step, (params, aot.batch_sharded(state, b, mesh), i32(b), flags), {}))
        return out
    t = cfg.data.seq_len
    cache = jax.eval_shape(lambda: {"cache": decode.empty_cache(b, t, model), "length": jnp.zeros((b,), jnp.int32),
                                    "last": jnp.zeros((b, model.hidden_size), jnp.dtype(model.dtype))})
    cache = aot.batch_sharded(cache, b, mesh)
    if "prefill" in wanted:
        out.append(("prefill_full", decode.full_prefill, (params, cache, aot.batch_sharded(i32(b, t), b, mesh)),
                    {"model": model}))
    if "decode" in wanted:
        step = jax.jit(partial(decode.full_feed, model=model), donate_argnums=1)
        out.append(("decode_step", step, (params, cache, i32(b), flags), {}))
    return out


def memory_levers(cfg) -> list[str]:
    """What to change in a config whose train step does not fit: only levers that cannot need
    more device memory. Layout changes (model.schedule, mesh.tensor / stage) can go either way
    (chunk_major needs more at fsdp 16): comet-plan --search compiles those."""
    out = {"none": ["model.remat=full or model.remat=offload"], "dots": ["model.remat=full or model.remat=offload"],
           "full": ["model.remat=offload (saved step inputs in host memory)"], "offload": []}.get(cfg.model.remat, [])
    dp, accum, batch = cfg.mesh.data * cfg.mesh.fsdp, cfg.optim.grad_accum, cfg.train.batch_size
    if batch % (2 * accum) == 0 and (batch // (2 * accum)) % dp == 0:
        out.append(f"optim.grad_accum={2 * accum} (half the micro-batch, same batch)")
    return out + ["a smaller train.batch_size", "more chips (a larger topology, then a larger mesh.fsdp)"]


def cpu_environment() -> None:
    """Lowering needs no accelerator: the CPU platform with 8 fake devices, set before jax
    starts (a process that already imported jax keeps what it has)."""
    if "jax" not in sys.modules:
        os.environ.setdefault("JAX_PLATFORMS", "cpu")
        os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")


def main(argv=None) -> int:
    args = parse_args(argv)
    cpu_environment()
    try:
        cfg = load_valid(args)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    import numpy as np

    from comet_jax import aot, build
    from comet_jax.model import attention
    from comet_jax.parallel import sharding

    try:
        model, comet, source = build.from_sections(cfg.model, cfg.comet, base_vocab(cfg))
        devices, where, compile_it = devices_for(args)
        m = cfg.mesh
        shape, note = aot.fit_mesh(m.data, m.fsdp, m.tensor, m.stage, len(devices))
    except (ConfigError, aot.Unavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if shape[0] * shape[1] != m.data * m.fsdp and cfg.train.batch_size % (shape[0] * shape[1]):
        print(f"error: train.batch_size ({cfg.train.batch_size}) is not divisible by data*fsdp = "
              f"{shape[0] * shape[1]} of the scaled-down mesh", file=sys.stderr)
        return 2
    mesh = sharding.make_mesh(*shape, devices=np.asarray(devices[: int(np.prod(shape))]))
    print(f"model from {source}: {model.num_layers} layers, hidden {model.hidden_size}, vocab {model.vocab_size}; "
          f"target {where}; mesh {dict(mesh.shape)}" + (f" ({note})" if note else ""), file=sys.stderr)
    kernel = attention.resolve(model.attention, model.dtype, args.platform)
    if kernel == "cudnn" and not any(d.platform == "gpu" for d in devices):
        # JAX traces the cuDNN kernel only where cuDNN is loaded (a GPU machine)
        print("cuDNN attention cannot be traced without a GPU; lowering with xla attention", file=sys.stderr)
        model, kernel = dataclasses.replace(model, attention="xla"), "xla"
    status = 0
    with attention.target(args.platform), sharding.tracing(mesh, cfg.mesh.rules):
        fns = build_functions(cfg, model, comet, mesh, set(args.functions.split(",")), args.decode_batch,
                              args.prefill_chunks)
        for name, fn, fargs, kwargs in fns:
            record = {"function": name, "platform": args.platform, "target": args.topology or where,
                      "mesh": dict(mesh.shape), "attention": kernel}
            try:
                if compile_it:
                    record.update(aot.compile_fn(fn, fargs, kwargs))
                else:
                    record.update(aot.export_fn(fn, fargs, "cuda" if args.platform == "cuda" else args.platform, kwargs))
            except Exception as e:  # noqa: BLE001 - reported per function, the others still run
                record.update({"compiled": False, "error": aot.first_line(e)})
                status = max(status, 1)
            if record.get("fits") is False:
                status = max(status, EXIT_OOM)
                print(f"{name}: the compiler ran out of device memory: {record['error']}; try "
                      + ", ".join(memory_levers(cfg)), file=sys.stderr)
            print(json.dumps(record), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
