"""Passkey exact match by where the answer starts in its chunk, for a checkpoint.

PYTHONPATH=. python scripts/passkey_offsets.py CHECKPOINT [--filler train|held_out]
    [--question train|held_out] [--max-len 512] [--span 160] [--samples 2] [--depth 0.5]

Builds comet-passkey prompts of every second length in [max_len - span, max_len] (at `depth`,
`samples` keys each), with the filler and the question each taken from the training or the
held-out prompt, generates greedily in CoMeT mode and prints exact match by the answer's
offset in its chunk (prompt length mod chunk size). Used in docs/demo/EXPERIMENTS.md to find
where the held-out prompt fails.
"""

from __future__ import annotations

import argparse

import numpy as np

from comet_jax import build, checkpoint
from comet_jax.data import passkey as pk
from comet_jax.evals.passkey import is_exact, prefix_ids
from comet_jax.infer.generate import Generator, Sampling
from comet_jax.io.tokenizer import load_tokenizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint")
    ap.add_argument("--filler", choices=tuple(pk.VARIANTS), default="train")
    ap.add_argument("--question", choices=tuple(pk.VARIANTS), default="train")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--span", type=int, default=160)
    ap.add_argument("--samples", type=int, default=2)
    ap.add_argument("--depth", type=float, default=0.5, help="needle depth in [0, 1] (1: right before the question)")
    args = ap.parse_args()
    variant = f"{args.filler}_filler_{args.question}_question"
    pk.VARIANTS[variant] = (pk.VARIANTS[args.filler][0], pk.VARIANTS[args.question][1])
    model, comet, meta = build.from_checkpoint(args.checkpoint)
    tok = load_tokenizer(args.checkpoint, meta)
    gen = Generator(checkpoint.load_params(args.checkpoint), model, comet, mode="comet")
    rng = np.random.default_rng(0)
    prompts = []
    for n in range(args.max_len - args.span, args.max_len + 1, 2):
        for _ in range(args.samples):
            key = pk.random_key(rng)
            ids, _, _ = pk.build_prompt(tok, n, args.depth, key, prefix_ids=prefix_ids(tok), variant=variant)
            prompts.append((ids, key))
    out = gen.generate([p for p, _ in prompts], Sampling(max_new_tokens=8), batch_size=24)
    by_offset: dict[int, list[bool]] = {}
    for (ids, key), toks in zip(prompts, out.tokens):
        by_offset.setdefault(len(ids) % comet.chunk_size, []).append(is_exact(tok.decode([int(t) for t in toks]), key))
    print(f"{args.filler} filler, {args.question} question, depth {args.depth}: exact by answer offset in chunk "
          f"(prompts): " + ", ".join(f"{o}: {np.mean(v):.2f} ({len(v)})" for o, v in sorted(by_offset.items())))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
