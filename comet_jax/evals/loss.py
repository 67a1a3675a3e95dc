"""comet-loss --checkpoint DIR --data FILE.jsonl [--mode full|comet] [--batch-size N]
           [--attention auto|xla|splash|cudnn] [--by-position 1k,4k,16k --plot FILE.png]

Mean next-token cross-entropy of a converted checkpoint over a JSONL file of
`{"input_ids": [...]}` (or `{"text": ...}` when the checkpoint has a tokenizer). A line with
input_ids may also hold `"loss_mask": [0/1 per token]` or `"labels"` (-100 = not scored): only the tokens it marks are scored
(e.g. the answers in a long document of questions; the first token is never scored).
The last line of stdout is one JSON object:
  {"loss": float, "n_tokens": int, "per_sequence": [{"loss": float, "n_tokens": int}, ...]}
With --by-position E1,E2,... it also holds "by_position": the mean loss of the tokens whose
position in their sequence lies in [0, E1), [E1, E2), ..., [E_last, end) (position = index of
the predicted token), the curve that shows whether later tokens gain from what came before;
--plot writes it as a PNG.

A line that is not UTF-8 or JSON, or holds a CoMeT special token id (placeholder or beacon: rows
the model inserts itself), is an error naming its file:line. Sequences whose positions reach
beyond the checkpoint's max_position_embeddings (when its meta records it) get a warning: in
full mode a sequence longer than it; in comet mode positions restart in every chunk, so only a
chunk's span (text, beacons and memory slots) is compared, whatever the sequence length.

From a checkout without installing: `python -m eval.loss` (the same code).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from comet_jax.checkpoint import CheckpointError
from comet_jax.evals.common import add_model_options, check_not_a_run_dir


def position_warning(seqs, data: str, mode: str, comet, max_positions) -> str | None:
    """One stderr line when positions go past what the checkpoint was trained on, else None."""
    if not isinstance(max_positions, int) or max_positions < 1 or not seqs:
        return None  # older checkpoints do not record it
    if mode == "full":
        long = [i for i, s in enumerate(seqs) if len(s) > max_positions]
        if not long:
            return None
        return (f"warning: {len(long)} sequence(s) longer than the checkpoint's max_position_embeddings "
                f"{max_positions} (the first {data}:{long[0] + 1}, {len(seqs[long[0]])} tokens); their positions "
                "beyond it were never trained")
    import dataclasses

    from comet_jax.layout import Slots

    # a chunk of c text tokens holds at most this many valid slots, numbered from 0 in every chunk
    c = min(max(len(s) for s in seqs), comet.chunk_size)
    span = dataclasses.replace(Slots.of(comet), chunk_size=c).size
    if span <= max_positions:
        return None
    return (f"warning: CoMeT positions are per chunk and a chunk here spans up to {span} positions ({c} text, "
            f"beacons and memory slots), more than the checkpoint's max_position_embeddings {max_positions}; "
            "a smaller --chunk-size keeps them in range")


def read_loss_masks(path, seqs) -> list | None:
    """The scored tokens of every line (bool arrays from its "labels" or "loss_mask", as training
    reads them: comet_jax/data/jsonl.py; None for a line with neither), or None when no line has
    one. DataError naming file:line for a bad one."""
    from comet_jax.data.jsonl import record_mask

    masks = []
    with open(path, "rb") as f:
        for lineno, (line, ids) in enumerate(zip(f, seqs), start=1):
            masks.append(record_mask(json.loads(line), list(map(int, ids)), f"{path}:{lineno}"))
    return masks if any(m is not None for m in masks) else None


def apply_masks(tokens, masks):
    """Keep the (loss, position) pairs of the tokens a line's mask marks."""
    if masks is None:
        return tokens
    return [(x, p) if m is None else (x[m[p]], p[m[p]]) for (x, p), m in zip(tokens, masks)]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="comet-loss", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="converted checkpoint directory")
    ap.add_argument("--data", required=True, help="JSONL file, one sequence a line")
    ap.add_argument("--mode", choices=("full", "comet"), default="full",
                    help="full: plain backbone over the whole sequence; comet: chunked with memory")
    ap.add_argument("--batch-size", type=int, default=8, help="sequences per compiled batch (default 8)")
    add_model_options(ap, "float32")
    ap.add_argument("--stride", type=int, help="comet mode: override the temp beacon stride")
    ap.add_argument("--budget", type=int, help="comet mode: override the temp memory budget")
    ap.add_argument("--by-position", metavar="E1,E2,...",
                    help="also report the mean loss per bucket of token positions (k/M suffixes), e.g. 1k,4k,16k")
    ap.add_argument("--plot", metavar="FILE.png", help="with --by-position: write the curve as a PNG")
    return ap


def parse_edges(text: str) -> list[int]:
    """'1k,4k,16k' -> [1024, 4096, 16384]; ValueError unless strictly increasing lengths."""
    from comet_jax.evals.common import parse_length

    edges = [parse_length(x) for x in text.split(",") if x.strip()]
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"--by-position {text!r}: give increasing positions, e.g. 1k,4k,16k")
    return edges


def plot_buckets(buckets: list[dict], mode: str, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comet_jax.evals.common import format_length, save_png

    live = [b for b in buckets if b["loss"] is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"{format_length(b['from'])}-{format_length(b['to']) if b['to'] else 'end'}" for b in live]
    ax.plot(range(len(live)), [b["loss"] for b in live], marker="o", label=mode)
    ax.set_xticks(range(len(live)), labels, rotation=30)
    ax.set_xlabel("token position")
    ax.set_ylabel("mean loss (nats)")
    ax.legend()
    fig.tight_layout()
    save_png(fig, path)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.batch_size <= 0:
        print(f"error: --batch-size must be > 0, got {args.batch_size}", file=sys.stderr)
        return 2
    edges = None
    try:
        if args.plot and not args.by_position:
            raise ValueError("--plot needs --by-position")
        if args.by_position:
            edges = parse_edges(args.by_position)
        if args.plot:
            from comet_jax.evals.common import check_out_dir

            check_out_dir(Path(args.plot).parent or ".", "--plot")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # Heavy imports after argument parsing, so --help and usage errors are instant.
    from tqdm import tqdm

    from comet_jax import build, checkpoint
    from comet_jax.config import ConfigError
    from comet_jax.data.jsonl import DataError, comet_token_names, read_jsonl
    from comet_jax.infer.scoring import position_buckets, token_losses_batch
    from comet_jax.io.tokenizer import load_tokenizer

    try:
        check_not_a_run_dir(args.checkpoint)
        model, comet, meta = build.from_checkpoint(args.checkpoint, chunk_size=args.chunk_size, stride=args.stride,
                                                   budget=args.budget, dtype=args.dtype,
                                                   attention=args.attention)
        seqs = read_jsonl(args.data, load_tokenizer(args.checkpoint, meta), model.real_vocab,
                          reserved=comet_token_names(comet))
        if not seqs:
            raise DataError(f"{args.data}: no sequences")
        masks = read_loss_masks(args.data, seqs)
        params = checkpoint.load_params(args.checkpoint)
    except (CheckpointError, ConfigError, DataError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    warning = position_warning(seqs, args.data, args.mode, comet, meta.get("max_position_embeddings"))
    if warning:
        print(warning, file=sys.stderr)

    start = time.time()
    tokens = []
    with tqdm(total=len(seqs), desc=f"loss ({args.mode})", unit="seq", file=sys.stderr) as bar:
        for i in range(0, len(seqs), args.batch_size):
            batch = seqs[i: i + args.batch_size]
            tokens += token_losses_batch(params, batch, args.batch_size, model, comet, args.mode)
            bar.update(len(batch))
    tokens = apply_masks(tokens, masks)
    if not sum(len(x) for x, _ in tokens):
        print(f"error: {args.data}: the loss masks mark no token after the first of its line", file=sys.stderr)
        return 2
    results = [(float(x.sum()), len(x)) for x, _ in tokens]
    total = sum(s for s, _ in results)
    count = sum(n for _, n in results)
    print(f"{count} tokens in {time.time() - start:.1f}s", file=sys.stderr)
    out = {"loss": total / count, "n_tokens": count,
           "per_sequence": [{"loss": s / n if n else None, "n_tokens": n} for s, n in results]}
    if edges is not None:
        out["by_position"] = position_buckets(tokens, edges)
        if args.plot:
            plot_buckets(out["by_position"], args.mode, Path(args.plot))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
