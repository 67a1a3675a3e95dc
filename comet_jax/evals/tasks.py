"""comet-tasks --checkpoint DIR --data tasks.jsonl [--metric em|f1|rouge_l]
            [--max-new-tokens N] [--out DIR] [--mode comet|full] [--stop ID ...]

Long-context question answering: each line of tasks.jsonl is
  {"context": "...", "question": "...", "answers": ["...", ...]}   or
  {"prompt": "...", "answers": ["...", ...]}
and the prompt given to the model is, for the first form,
  context + "\\n\\nQuestion: " + question + "\\nAnswer:"
(after the tokenizer's BOS, if it adds one). The answer is greedy generation
(comet_jax.infer.generate.Generator: constant memory at any context length in comet mode) of
at most --max-new-tokens tokens, cut at the first newline or stop id, stripped. Every item is
scored with EM, F1 (SQuAD normalisation) and ROUGE-L (comet_jax/evals/metrics.py), each the
best over its answers; --metric picks the headline `score`.

eval/make_tasks.py writes a synthetic key-value retrieval file (no download). A local
SCROLLS / LongBench file works once its lines hold these fields: e.g. LongBench's
{"context", "input", "answers"} lines become {"context", "question": input, "answers"}.

Writes OUT/predictions.jsonl (per item: index, prediction, answers, em, f1, rouge_l,
prompt_tokens) and OUT/results.json (settings, the mean of each metric, `score`), both
atomically after every batch ("complete": false until the last). An OUT that already holds
results, or that another command is using, is refused; bad input is one line on stderr, exit 2, nothing written. The last stdout
line is one JSON object.

From a checkout without installing: `python -m eval.tasks` (the same code).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from comet_jax.evals.common import add_model_options, atomic_write, check_not_a_run_dir, check_out_dir, hold_out_dir
from comet_jax.evals.metrics import METRICS, score

EXIT_USAGE = 2
RESULTS, PREDICTIONS = "results.json", "predictions.jsonl"


def build_prompt(item: dict) -> str:
    if "prompt" in item:
        return item["prompt"]
    return item["context"] + "\n\nQuestion: " + item["question"] + "\nAnswer:"


def check_item(item, where: str) -> dict:
    """The item if it has a prompt (or context and question) and a non-empty list of non-empty
    string answers; else ValueError naming `where`."""
    if not isinstance(item, dict):
        raise ValueError(f"{where}: not a JSON object")
    need = ("prompt",) if "prompt" in item else ("context", "question")
    for key in need:
        if not isinstance(item.get(key), str):
            raise ValueError(f"{where}: needs a string {key!r} (or a 'prompt'), and 'answers'")
    answers = item.get("answers")
    if not isinstance(answers, list) or not answers:
        raise ValueError(f"{where}: 'answers' must be a non-empty list of strings")
    if not all(isinstance(a, str) and a.strip() for a in answers):
        raise ValueError(f"{where}: every answer must be a non-empty string")
    return item


def read_items(path: str) -> list[dict]:
    try:
        lines = Path(path).read_bytes().splitlines()
    except OSError as e:
        raise ValueError(f"cannot read {path}: {e.strerror}") from None
    items = []
    for i, raw in enumerate(lines, 1):
        where = f"{path}:{i}"
        if not raw.strip():
            raise ValueError(f"{where}: empty line")
        try:
            item = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise ValueError(f"{where}: invalid JSON ({type(e).__name__})") from None
        items.append(check_item(item, where))
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def encode_prompts(items: list[dict], tokenizer, reserved, path: str) -> list[list[int]]:
    from comet_jax.evals.passkey import prefix_ids

    prefix = prefix_ids(tokenizer)
    out = []
    for i, item in enumerate(items, 1):
        ids = prefix + list(tokenizer.encode(build_prompt(item)).ids)
        bad = [t for t in ids if t in reserved]
        if bad:  # rows the model inserts itself are never input
            raise ValueError(f"{path}:{i}: the prompt encodes to CoMeT special token id {bad[0]}")
        out.append(ids)
    return out


def answer_text(tokens, tokenizer, stop: set[int]) -> str:
    """The generated text up to the first stop id or newline, stripped."""
    ids = []
    for t in (int(t) for t in tokens):
        if t in stop:
            break
        ids.append(t)
    n = tokenizer.get_vocab_size()
    text = tokenizer.decode([t for t in ids if t < n])  # CoMeT ids are not text
    return text.split("\n", 1)[0].strip()


def summarize(base: dict, rows: list[dict], n_items: int, metric: str) -> dict:
    means = {m: sum(r[m] for r in rows) / len(rows) if rows else None for m in METRICS}
    return {**base, **means, "score": means[metric], "items": len(rows), "complete": len(rows) == n_items}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="comet-tasks", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="converted or exported checkpoint directory")
    ap.add_argument("--data", required=True, help="JSONL of {context, question, answers} or {prompt, answers}")
    ap.add_argument("--metric", choices=METRICS, default="f1", help="headline metric (default f1); all are written")
    ap.add_argument("--max-new-tokens", type=int, default=32, help="most answer tokens (default 32)")
    ap.add_argument("--out", default="runs/tasks", help="output directory (default runs/tasks)")
    ap.add_argument("--mode", choices=("comet", "full"), default="comet",
                    help="comet: constant-memory CoMeT generation; full: plain backbone, KV cache over everything")
    ap.add_argument("--stop", type=int, nargs="*", default=[], metavar="ID", help="token ids that end an answer")
    ap.add_argument("--tokenizer", help="byte, passkey or a tokenizer.json path (default: the checkpoint's)")
    ap.add_argument("--batch-size", type=int, default=1, help="items generated together (default 1)")
    add_model_options(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("max_new_tokens", "batch_size"):  # before the heavy imports: usage errors are instant
        if getattr(args, name) < 1:
            print(f"error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}", file=sys.stderr)
            return EXIT_USAGE
    return hold_out_dir(args.out, lambda: _main(args), "comet-tasks")


def _main(args) -> int:
    """The work of main, holding --out."""
    from comet_jax import build, checkpoint
    from comet_jax.config import ConfigError
    from comet_jax.data.jsonl import comet_token_names
    from comet_jax.io.tokenizer import load_tokenizer, tokenizer_by_name

    try:
        out = check_out_dir(args.out)  # before the work, not after it
        for name in (RESULTS, PREDICTIONS):
            if (out / name).exists():
                raise ValueError(f"{out / name} exists (an earlier run): use another --out")
        check_not_a_run_dir(args.checkpoint)
        items = read_items(args.data)
        model, comet, meta = build.from_checkpoint(args.checkpoint, chunk_size=args.chunk_size, dtype=args.dtype,
                                                   attention=args.attention)
        tokenizer = tokenizer_by_name(args.tokenizer) if args.tokenizer else load_tokenizer(args.checkpoint, meta)
        if tokenizer is None:
            raise ValueError(f"{args.checkpoint} has no tokenizer.json: pass --tokenizer")
        bad = [t for t in args.stop if not 0 <= t < model.real_vocab]
        if bad:
            raise ValueError(f"--stop {bad[0]} is not a token id of this model (0..{model.real_vocab - 1})")
        prompts = encode_prompts(items, tokenizer, comet_token_names(comet), args.data)
        params = checkpoint.load_params(args.checkpoint)
    except (checkpoint.CheckpointError, ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    import numpy as np
    from tqdm import tqdm

    from comet_jax.infer.generate import Generator, Sampling

    gen = Generator(params, model, comet, mode=args.mode)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, stop_tokens=tuple(args.stop))
    base = {"checkpoint": str(args.checkpoint), "data": str(args.data), "mode": args.mode, "metric": args.metric,
            "max_new_tokens": args.max_new_tokens,
            "chunk_size": comet.chunk_size if args.mode == "comet" else None,
            "prompt_format": 'context + "\\n\\nQuestion: " + question + "\\nAnswer:"'}
    rows: list[dict] = []
    t0 = time.perf_counter()
    try:
        with tqdm(total=len(items), unit="item", disable=args.quiet, file=sys.stderr, desc=f"tasks {args.mode}") as bar:
            for i in range(0, len(items), args.batch_size):
                batch = [np.asarray(p, np.int32) for p in prompts[i: i + args.batch_size]]
                res = gen.generate(batch, sampling, batch_size=args.batch_size)
                for j, toks in enumerate(res.tokens):
                    k = i + j
                    pred = answer_text(toks, tokenizer, set(args.stop))
                    rows.append({"index": k, "prediction": pred, "answers": items[k]["answers"],
                                 **score(pred, items[k]["answers"]), "prompt_tokens": len(prompts[k])})
                results = summarize({**base, "seconds": round(time.perf_counter() - t0, 2)}, rows, len(items),
                                    args.metric)
                out.mkdir(parents=True, exist_ok=True)
                atomic_write(out / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in rows).encode())
                atomic_write(out / RESULTS, json.dumps(results, indent=1).encode())
                bar.update(len(batch))
    except OSError as e:
        print(f"error: cannot write the results to {out}: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(f"wrote {out / PREDICTIONS} and {out / RESULTS}", file=sys.stderr)
    print(json.dumps({k: results[k] for k in ("mode", "metric", "score", *METRICS, "items")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
