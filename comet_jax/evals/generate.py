"""comet-generate --checkpoint DIR --prompts P.jsonl [--max-new-tokens N]
               [--temperature T --top-p P --seed S] [--stop ID ...] [--mode comet|full]
               [--official-layout] [--tokenizer byte|passkey|PATH] [--batch-size B]

Continue every prompt of a JSONL file: each line is `{"input_ids": [...]}` or `{"text": "..."}`
(text needs a tokenizer: the checkpoint's or --tokenizer). Prints one JSON line per prompt, in
order: `{"tokens": [...], "text": "..."}` (text when a tokenizer is available; a stop token is
included in `tokens` and left out of `text`). Greedy unless --temperature > 0 (then nucleus
sampling with --top-p, reproducible per --seed).

CoMeT mode keeps constant state whatever the prompt length: closed chunks are prefilled into
the memories, the last chunk stays open and grows with the continuation (docs/design.md §1.5).
--official-layout reproduces the official generation code (§1.7): its chunk layout (no temp
beacon after the final group of any chunk) and the temp beacons its decoder inserts (after a
text token that makes the open chunk's placeholders plus text a multiple of the stride; they
are fed, not printed). The official code never closes a chunk while generating and lets the
last one grow past the chunk size, while we close it and open a new one when it is full, so
the two agree token for token while the continuation fits in the last chunk. Full mode keeps a KV
cache over the whole prompt and continuation. Progress goes to stderr; bad input is a
one-line error with exit 2 and nothing printed on stdout.

From a checkout without installing: `python -m eval.generate` (the same code).
"""

from __future__ import annotations

import argparse
import json
import sys

from comet_jax.evals.common import add_model_options, check_not_a_run_dir


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="comet-generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="converted checkpoint directory")
    ap.add_argument("--prompts", required=True, help='JSONL file: {"input_ids": [...]} or {"text": "..."} per line')
    ap.add_argument("--max-new-tokens", type=int, default=32, help="most tokens generated per prompt (default 32)")
    ap.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    ap.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed")
    ap.add_argument("--stop", type=int, nargs="*", default=[], metavar="ID",
                    help="token ids that end a continuation (included in the tokens)")
    ap.add_argument("--mode", choices=("comet", "full"), default="comet", help="comet (default) or full attention")
    ap.add_argument("--official-layout", action="store_true",
                    help="comet mode: the official generation code's chunk layout (docs/design.md §1.7)")
    ap.add_argument("--tokenizer", help="byte, passkey or a tokenizer.json path (default: the checkpoint's)")
    ap.add_argument("--batch-size", type=int, default=1, help="prompts generated together (default 1)")
    add_model_options(ap, "float32")
    return ap


def load_prompts(path: str, tokenizer, model, comet) -> list:
    from comet_jax.data.jsonl import DataError, comet_token_names, read_jsonl

    prompts = read_jsonl(path, tokenizer, model.real_vocab, reserved=comet_token_names(comet), min_tokens=1)
    if not prompts:
        raise DataError(f"{path}: no prompts")
    return prompts


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for bad, msg in ((args.max_new_tokens < 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
                     (args.temperature < 0, f"--temperature must be >= 0, got {args.temperature}"),
                     (not 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}"),
                     (args.batch_size < 1, f"--batch-size must be >= 1, got {args.batch_size}"),
                     (args.official_layout and args.mode != "comet", "--official-layout needs --mode comet")):
        if bad:
            print(f"error: {msg}", file=sys.stderr)
            return 2
    from tqdm import tqdm

    from comet_jax import build, checkpoint
    from comet_jax.checkpoint import CheckpointError
    from comet_jax.config import ConfigError
    from comet_jax.data.jsonl import DataError
    from comet_jax.infer.generate import Generator, Sampling
    from comet_jax.io.tokenizer import load_tokenizer, tokenizer_by_name

    try:
        check_not_a_run_dir(args.checkpoint)
        model, comet, meta = build.from_checkpoint(args.checkpoint, chunk_size=args.chunk_size, dtype=args.dtype,
                                                   attention=args.attention)
        tokenizer = tokenizer_by_name(args.tokenizer) if args.tokenizer else load_tokenizer(args.checkpoint, meta)
        prompts = load_prompts(args.prompts, tokenizer, model, comet)
        bad = [t for t in args.stop if not 0 <= t < model.real_vocab]
        if bad:
            raise ConfigError(f"--stop {bad[0]} is not a token id of this model (0..{model.real_vocab - 1})")
        params = checkpoint.load_params(args.checkpoint)
    except (CheckpointError, ConfigError, DataError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    gen = Generator(params, model, comet, mode=args.mode, official=args.official_layout)
    sampling = Sampling(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                        stop_tokens=tuple(args.stop), seed=args.seed)
    stop = set(args.stop)
    with tqdm(total=len(prompts), desc=f"generate ({args.mode})", unit="prompt", file=sys.stderr) as bar:
        for i in range(0, len(prompts), args.batch_size):
            batch = prompts[i: i + args.batch_size]
            out = gen.generate(batch, sampling, batch_size=args.batch_size)
            for tokens in out.tokens:
                record = {"tokens": [int(t) for t in tokens]}
                if tokenizer is not None:  # CoMeT and stop tokens are not text
                    n = tokenizer.get_vocab_size()
                    record["text"] = tokenizer.decode([t for t in record["tokens"] if t < n and t not in stop])
                print(json.dumps(record), flush=True)
            bar.update(len(batch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
