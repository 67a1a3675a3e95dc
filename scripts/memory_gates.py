"""How long a checkpoint's global memory can hold a passkey: its gates over one prompt.

PYTHONPATH=. python scripts/memory_gates.py CHECKPOINT [--length 2048] [--depth 0] [--key 86523]

Runs one comet-passkey prompt through the model (layer-major, eagerly) and records every
global-memory gate g = sigmoid(logit) (docs/design.md, global memory). A slot keeps what it
held before chunk i with weight g_i, so what the key's chunk k wrote survives to chunk n with
weight (1 - g_k) prod_{k<i<=n} g_i. Prints per layer: the median gate logits at the key's
chunk and at the later chunks, and for the slot that holds most of the key's chunk at the
question: how much it wrote (1 - g_k), how much of that is left, and the updates that halve it
at its mean rate over the later chunks.
The demo's models are trained on 32 chunks and asked at up to 1024: a model whose best slot
halves within a few hundred updates cannot read a key 1023 updates back. Used in
docs/demo/EXPERIMENTS.md to tell a seed that keeps far keys from one that does not.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np

from comet_jax import build, checkpoint, layout
from comet_jax.data import passkey as pk
from comet_jax.evals.passkey import prefix_ids
from comet_jax.io.tokenizer import load_tokenizer
from comet_jax.model import backbone
from comet_jax.model import comet as cm
from comet_jax.model.memory import gate_logit


def gate_logits(params, ids: np.ndarray, model, comet) -> np.ndarray:
    """[layers, chunks, G] gate logits of one sequence (chunk 0's are not used: it writes)."""
    c = comet.chunk_size
    plan = [c] * (len(ids) // c) + ([len(ids) % c] if len(ids) % c else [])
    batch = layout.build([ids], [plan], comet).as_dict()
    seen = []
    update = cm.global_update

    def recording(p, x, s_prev, *rest):
        seen.append(np.asarray(gate_logit(p, x, s_prev)[1])[0])
        return update(p, x, s_prev, *rest)

    cm.global_update = recording
    try:
        with jax.disable_jit():
            cm.layer_major_hidden(backbone.cast_params(params, model.dtype), batch, model, comet, remat=False)
    finally:
        cm.global_update = update
    return np.stack(seen).reshape(model.num_layers, len(plan), -1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--length", type=int, default=2048, help="prompt tokens (default 2048)")
    ap.add_argument("--depth", type=float, default=0.0, help="needle depth (default 0: farthest)")
    ap.add_argument("--key", default="86523")
    ap.add_argument("--save", help="also write the logits [layers, chunks, G] and the key's chunk to this .npz")
    args = ap.parse_args()
    model, comet, meta = build.from_checkpoint(args.checkpoint)
    tok = load_tokenizer(args.checkpoint, meta)
    ids, _, info = pk.build_prompt(tok, args.length, args.depth, args.key, prefix_ids=prefix_ids(tok))
    ids = np.asarray(ids)
    k = info["needle_offset"] // comet.chunk_size
    logits = gate_logits(checkpoint.load_params(args.checkpoint), ids, model, comet)
    n = logits.shape[1]
    if args.save:
        np.savez(args.save, logits=logits, key_chunk=k, ids=ids)
    print(f"{args.checkpoint}: {len(ids)} tokens, {n} chunks of {comet.chunk_size}, key in chunk {k}, "
          f"question {n - 1 - k} updates later")
    for layer, lg in enumerate(logits):
        later = lg[k + 1:]
        log_keep = -np.logaddexp(0.0, -later).sum(axis=0)  # sum of ln sigmoid(logit), per slot
        log_write = -np.logaddexp(0.0, lg[k])  # ln(1 - g) at the key's chunk
        share = np.exp(log_write + log_keep)  # the key chunk's weight in each slot at the question
        best = int(np.argmax(share))
        halve = np.log(0.5) / min(log_keep[best] / max(len(later), 1), -1e-12)
        print(f"  layer {layer}: gate logits at the key's chunk median {np.median(lg[k]):+.2f}, later chunks "
              f"median {np.median(later):+.2f}; best slot {best}: wrote {np.exp(log_write[best]):.2f} of "
              f"the key's chunk, {share[best]:.3g} of it left at the question, halves in {halve:.0f} updates")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
