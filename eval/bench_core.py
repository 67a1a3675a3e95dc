"""python -m eval.bench_core [--tokens 8192] [--memory-at 8192,32768]

Throughput of the CoMeT core on one device: forward and forward+backward tokens/s of
the layer-major training schedule (and the chunk-major inference schedule), compile
time reported separately, plus the compiled peak memory (`memory_analysis()`) at the
given sequence lengths. Default configuration: hidden 512, 4 layers, 8 heads,
chunk 512, G 64, stride 8, budget 256, float32.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax import build, chunking, layout
from comet_jax.config import ATTENTION_HELP, ATTENTIONS, REMATS, CometConfig, ModelConfig
from comet_jax.train.flops import forward_flops_per_token, train_flops_per_token
from comet_jax.model import attention, comet as cm
from comet_jax.model.init import init_params


def configs(args) -> tuple[ModelConfig, CometConfig]:
    return build.scratch(args.vocab, chunk_size=args.chunk, global_size=args.global_size, stride=args.stride,
                         budget=args.budget, hidden_size=args.hidden, intermediate_size=args.intermediate,
                         num_layers=args.layers, num_heads=args.heads, num_kv_heads=args.heads,
                         head_dim=args.hidden // args.heads, dtype=args.dtype, param_dtype=args.dtype,
                         attention=args.attention)


def make_batch(tokens: int, batch: int, model: ModelConfig, comet: CometConfig) -> dict:
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, comet.placeholder_id, tokens) for _ in range(batch)]
    lay = layout.build(seqs, [chunking.fixed(tokens, comet.chunk_size)] * batch, comet)
    return {k: jnp.asarray(v) for k, v in lay.as_dict().items()}


def timed(fn, *args, repeats: int):
    t0 = time.perf_counter()
    compiled = fn.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - t0)
    return compiled, compile_s, float(np.median(times))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.bench_core", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--intermediate", type=int, default=1408)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--global-size", type=int, default=64)
    ap.add_argument("--stride", type=int, default=8)
    ap.add_argument("--budget", type=int, default=256)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory-at", default="8192,32768", help="sequence lengths for compiled peak memory")
    ap.add_argument("--remat", choices=REMATS, default="full",
                    help="activation recompute of the train step: full (default), dots (keep matmul outputs), none")
    ap.add_argument("--no-remat", action="store_true", help="the same as --remat none")
    ap.add_argument("--attention", choices=ATTENTIONS, default="auto", help=ATTENTION_HELP)
    args = ap.parse_args(argv)

    model, comet = configs(args)
    params = init_params(model, comet, jax.random.key(0))
    batch = make_batch(args.tokens, args.batch, model, comet)
    n_tok = args.tokens * args.batch
    remat = "none" if args.no_remat else args.remat
    results = {"device": str(jax.devices()[0].device_kind), "platform": platform.machine(),
               "attention": attention.resolve(model.attention, model.dtype),
               "config": {k: v for k, v in vars(args).items() if k not in ("repeats", "memory_at")}}

    fwd = {s: jax.jit(lambda p, b, s=s: cm.loss(p, b, model, comet, schedule=s, remat=False)) for s in cm.SCHEDULES}
    grad = jax.jit(jax.value_and_grad(lambda p, b: cm.loss(p, b, model, comet, schedule="layer_major", remat=remat)))
    for name, fn in [("forward_layer_major", fwd["layer_major"]), ("forward_chunk_major", fwd["chunk_major"]),
                     ("forward_backward_layer_major", grad)]:
        compiled, compile_s, run_s = timed(fn, params, batch, repeats=args.repeats)
        per_token = (train_flops_per_token if "backward" in name else forward_flops_per_token)(model, comet)
        gflops = per_token * n_tok / run_s / 1e9
        results[name] = {"tokens_per_s": round(n_tok / run_s, 1), "step_s": round(run_s, 3),
                         "compile_s": round(compile_s, 1), "model_gflop_per_token": round(per_token / 1e9, 4),
                         "model_gflop_per_s": round(gflops, 1)}
        print(f"{name:30s} {n_tok / run_s:9.1f} tokens/s  (step {run_s:.2f}s, compile {compile_s:.1f}s, "
              f"{gflops:.0f} model GFLOP/s)", flush=True)

    results["peak_memory_mb"] = {}
    grads = {s: jax.jit(jax.value_and_grad(lambda p, b, s=s: cm.loss(p, b, model, comet, schedule=s, remat=remat)))
             for s in cm.SCHEDULES}
    for length in [int(x) for x in args.memory_at.split(",") if x]:
        b = jax.eval_shape(lambda: make_batch(length, args.batch, model, comet))
        for schedule, fn in grads.items():
            mem = fn.lower(params, b).compile().memory_analysis()
            if mem is None:
                continue
            peak = (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2**20
            results["peak_memory_mb"][f"{schedule}@{length}"] = {
                "train_step_total": round(peak, 1), "temp": round(mem.temp_size_in_bytes / 2**20, 1)}
            print(f"compiled train step ({schedule:11s}) at {length:6d} tokens: temp "
                  f"{mem.temp_size_in_bytes / 2**20:8.1f} MB, total {peak:8.1f} MB", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
