"""On a GPU: CoMeT loss and gradients with cuDNN attention against xla attention.

python scripts/gpu_attention_check.py [--tokens 4096]

The CPU tests check that the arguments `attention._cudnn` passes mean what xla's dense masks
mean (under jax's own implementation); only a GPU can run cuDNN itself. Both kernels run in
bfloat16 on the same random model and batch, with a float32 xla run as the reference: cuDNN's
distance from it should be of the order of bfloat16 xla's. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from comet_jax import build
from comet_jax.model import comet as cm
from comet_jax.model.init import init_params
from eval.bench_core import make_batch


def run(attention: str, dtype: str, tokens: int):
    model, comet = build.scratch(1024, chunk_size=512, global_size=64, stride=8, budget=256, hidden_size=512,
                                 intermediate_size=1408, num_layers=2, num_heads=8, num_kv_heads=4,
                                 head_dim=64, dtype=dtype, param_dtype="float32", attention=attention)
    params = init_params(model, comet, jax.random.key(0))
    batch = make_batch(tokens, 2, model, comet)
    fn = jax.jit(jax.value_and_grad(lambda p: cm.loss(p, batch, model, comet, schedule="layer_major")))
    loss, grads = fn(params)
    return float(loss), np.concatenate([np.asarray(g, np.float32).ravel() for g in jax.tree.leaves(grads)])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()
    ref_loss, ref_g = run("xla", "float32", args.tokens)
    out = {"device": jax.devices()[0].device_kind, "reference_loss_f32": ref_loss}
    for attention in ("xla", "cudnn"):
        loss, g = run(attention, "bfloat16", args.tokens)
        out[f"{attention}_bf16"] = {"loss": loss, "loss_abs_diff": abs(loss - ref_loss),
                                    "grad_rel_l2_diff": float(np.linalg.norm(g - ref_g) / np.linalg.norm(ref_g))}
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
