"""python -m eval.make_tasks --out tasks.jsonl [--items N] [--words W] [--needles K] [--seed S]

A synthetic long-context task file for `python -m eval.tasks`, made with no download:
key-value retrieval with several needles. Each item's context is about W words of filler
sentences with K needle sentences "The value of key {key} is {value}." at random places (keys
are 6 random hex digits, values one random word of a fixed list, all distinct in an item); the
question asks for the value of one of the K keys, and the answer is that word:

  {"context": "...", "question": "What is the value of key 3fa91c?", "answers": ["orange"]}

The same seed writes the same file. Lines are written in the format eval.tasks reads, so a
local SCROLLS / LongBench-style file works the same way once its lines are
{"context", "question", "answers"} (or {"prompt", "answers"}).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from comet_jax.evals.common import atomic_write

FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.", "There and back again.")
VALUES = ("apple", "river", "orange", "falcon", "marble", "copper", "violet", "harbor", "meadow", "lantern",
          "pepper", "glacier", "canyon", "velvet", "ember", "willow")


def make_item(rng: np.random.Generator, words: int, needles: int) -> dict:
    """One key-value retrieval item (see the module docstring)."""
    keys: list[str] = []
    while len(keys) < needles:
        k = f"{int(rng.integers(0, 16 ** 6)):06x}"
        if k not in keys:
            keys.append(k)
    values = [VALUES[i] for i in rng.choice(len(VALUES), needles, replace=False)]
    sentences = []
    while sum(len(s.split()) for s in sentences) < words:
        sentences.append(FILLER[int(rng.integers(len(FILLER)))])
    for key, value in zip(keys, values):
        sentences.insert(int(rng.integers(0, len(sentences) + 1)), f"The value of key {key} is {value}.")
    ask = int(rng.integers(needles))
    return {"context": " ".join(sentences), "question": f"What is the value of key {keys[ask]}?",
            "answers": [values[ask]]}


def make_items(n: int, words: int, needles: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [make_item(rng, words, needles) for _ in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="make_tasks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, help="the JSONL file to write")
    ap.add_argument("--items", type=int, default=20, help="items (default 20)")
    ap.add_argument("--words", type=int, default=2000, help="filler words per context (default 2000)")
    ap.add_argument("--needles", type=int, default=4, help=f"key-value pairs per context, 1..{len(VALUES)} (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    for bad, msg in ((args.items < 1, f"--items must be >= 1, got {args.items}"),
                     (args.words < 0, f"--words must be >= 0, got {args.words}"),
                     (not 1 <= args.needles <= len(VALUES), f"--needles must be in 1..{len(VALUES)}"),
                     (out.is_dir(), f"--out {out} is a directory"),
                     (not out.parent.is_dir(), f"--out {out}: {out.parent} is not a directory")):
        if bad:
            print(f"error: {msg}", file=sys.stderr)
            return 2
    items = make_items(args.items, args.words, args.needles, args.seed)
    try:
        atomic_write(out, "".join(json.dumps(it) + "\n" for it in items).encode())
    except OSError as e:
        print(f"error: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(out), "items": len(items), "words": args.words, "needles": args.needles}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
