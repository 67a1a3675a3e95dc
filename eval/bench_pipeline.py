"""python -m eval.bench_pipeline [--chunks 64] [--stages 1,2,4]

Compiled per-device memory (`memory_analysis()`) of a pipelined train step (value and
gradients of the loss) for P = 1, 2, 4 stages on one sequence of `--chunks` chunks, and
the schedule's idle fraction counted from its active (device, step) slots against
(P-1)/(L+P-1). Activation memory is the part of the temporaries that grows with the
number of chunks: (temp at N chunks - temp at N/2 chunks) * 2, which removes the fixed
buffers (parameter gradients, one block of logits) that do not depend on the sequence. Runs on fake CPU devices; nothing is executed, only compiled. On a
machine with one accelerator there is nothing to pipeline: it refuses.
"""

from __future__ import annotations

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import AxisType, Mesh  # noqa: E402

from comet_jax import build, chunking, layout  # noqa: E402
from comet_jax.loss import IGNORE  # noqa: E402
from comet_jax.model import comet as cm  # noqa: E402
from comet_jax.model.init import init_params  # noqa: E402
from comet_jax.parallel.pipeline import pipeline_token_losses  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eval.bench_pipeline", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--chunks", type=int, default=64)
    ap.add_argument("--stages", default="1,2,4")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=64)
    args = ap.parse_args(argv)
    stages = [int(s) for s in args.stages.split(",")]
    if len(jax.devices()) < max(stages):
        print(f"error: {max(stages)} devices needed, {len(jax.devices())} available (set XLA_FLAGS="
              "--xla_force_host_platform_device_count=8 on CPU)", file=sys.stderr)
        return 2
    model, comet = build.scratch(256, chunk_size=args.chunk, global_size=8, stride=8, budget=16,
                                 hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_layers=args.layers,
                                 num_heads=4, num_kv_heads=2, head_dim=args.hidden // 4)
    params = init_params(model, comet, jax.random.key(0))

    def temp_mb(p: int, chunks: int) -> float:
        n_tok = chunks * args.chunk
        seq = np.random.default_rng(0).integers(0, 256, n_tok)
        batch = layout.build([seq], [chunking.fixed(n_tok, args.chunk)], comet).as_dict()
        count = int((batch["labels"] != IGNORE).sum())
        mesh = Mesh(np.array(jax.devices()[:p]), ("stage",), axis_types=(AxisType.Auto,))
        if p == 1:
            f = lambda prm, b: cm.token_losses(prm, b, model, comet, "layer_major", True).sum() / count  # noqa: E731
        else:
            f = lambda prm, b: pipeline_token_losses(prm, b, model, comet, mesh).sum() / count  # noqa: E731
        mem = jax.jit(jax.value_and_grad(f)).lower(params, batch).compile().memory_analysis()
        return mem.temp_size_in_bytes / 2**20

    results = {"config": vars(args), "rows": []}
    base = base_act = None
    for p in stages:
        temp, half = temp_mb(p, args.chunks), temp_mb(p, args.chunks // 2)
        act = 2 * (temp - half)
        base, base_act = base or temp, base_act or act
        steps = args.layers + p - 1
        active = sum(1 for t in range(steps) for d in range(p) if 0 <= t - d < args.layers)
        row = {"P": p, "temp_mb_per_device": round(temp, 1), "temp_vs_P1": round(temp / base, 3),
               "activation_mb_per_device": round(act, 1), "activation_vs_P1": round(act / base_act, 3),
               "ideal_activation_vs_P1": round(steps / (args.layers * p), 3),
               "idle_counted": round(1 - active / (p * steps), 4), "idle_formula": round((p - 1) / steps, 4)}
        results["rows"].append(row)
        print(f"P={p}: temp {temp:7.1f} MB/device ({temp / base:.2f}x), activations {act:7.1f} MB/device "
              f"({act / base_act:.2f}x of P=1; wavefront bound {row['ideal_activation_vs_P1']:.2f}x), idle "
              f"{row['idle_counted']:.3f} (formula {row['idle_formula']:.3f})", flush=True)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
