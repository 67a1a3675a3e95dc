"""python -m eval.make_passkey_docs --out FILE.jsonl [--format loss|tasks] [--docs N] [--tokens T]
                                  [--episode E] [--end TEXT] [--tokenizer passkey] [--seed S]

Passkey text for the two evaluations that read JSONL, made with no download (the synthetic
task of comet_jax/data/passkey.py, so the demo models, trained on nothing else, can be scored):

  --format loss   (python -m eval.loss --by-position): N documents of about T tokens, each a run of
                  passkey prompts of E tokens with their answers (" " + key + TEXT), one after
                  another; {"input_ids": [...], "loss_mask": [...]} with the mask on the answers
                  only. The loss of an answer at position p shows whether the model still reads
                  its memory after p tokens (its needle is at most E tokens back).
  --format tasks  (python -m eval.tasks): N items {"prompt": a passkey prompt of T tokens with the
                  needle at a random depth, "answers": [key]}.

The same seed writes the same file.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from comet_jax.evals.common import atomic_write, parse_length


def loss_docs(tokenizer, docs: int, tokens: int, episode: int, end: str, seed: int) -> list[dict]:
    from comet_jax.data.passkey import build_prompt, encode, random_key

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(docs):
        ids, mask = [], []
        while True:
            key = random_key(rng)
            answer = encode(tokenizer, " " + key + end)
            prompt, _, _ = build_prompt(tokenizer, episode - len(answer), float(rng.random()), key)
            if len(ids) + len(prompt) + len(answer) > tokens:
                break
            ids += prompt.tolist() + answer.tolist()
            mask += [0] * len(prompt) + [1] * len(answer)
        out.append({"input_ids": ids, "loss_mask": mask})
    return out


def task_items(tokenizer, items: int, tokens: int, seed: int) -> list[dict]:
    from comet_jax.data.passkey import build_prompt, random_key

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(items):
        key = random_key(rng)
        prompt, _, _ = build_prompt(tokenizer, tokens, float(rng.random()), key)
        out.append({"prompt": tokenizer.decode(prompt.tolist()), "answers": [key]})
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make_passkey_docs", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the JSONL file to write")
    ap.add_argument("--format", choices=("loss", "tasks"), default="loss", help="for eval.loss or eval.tasks")
    ap.add_argument("--docs", type=int, default=4, help="documents (loss) or items (tasks) (default 4)")
    ap.add_argument("--tokens", default="64k", help="tokens per document or prompt, k/M allowed (default 64k)")
    ap.add_argument("--episode", default="512", help="loss: tokens per prompt + answer in a document (default 512)")
    ap.add_argument("--end", default="", help="loss: text after each answer's key (as data.passkey.end)")
    ap.add_argument("--tokenizer", default="passkey", help="byte, passkey or a tokenizer.json path (default passkey)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    try:
        from comet_jax.io.tokenizer import tokenizer_by_name

        tokens, episode = parse_length(args.tokens), parse_length(args.episode)
        if args.docs < 1:
            raise ValueError(f"--docs must be >= 1, got {args.docs}")
        if any(c.isdigit() for c in args.end):
            raise ValueError(f"--end {args.end!r} must not contain digits")
        if out.is_dir() or not out.parent.is_dir():
            raise ValueError(f"--out {out}: not a file in an existing directory")
        tok = tokenizer_by_name(args.tokenizer)
        if args.format == "loss":
            if episode > tokens:
                raise ValueError(f"--episode {episode} is longer than --tokens {tokens}")
            rows = loss_docs(tok, args.docs, tokens, episode, args.end, args.seed)
        else:
            rows = task_items(tok, args.docs, tokens, args.seed)
    except ValueError as e:  # a length too short for a prompt names the minimum
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        atomic_write(out, "".join(json.dumps(r) + "\n" for r in rows).encode())
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "format": args.format, "rows": len(rows), "tokens": tokens}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
