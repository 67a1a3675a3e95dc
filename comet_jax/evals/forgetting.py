"""comet-forgetting --checkpoint DIR [--mode comet|full] [--lengths 1k,4k,16k,64k,256k,1M]
                  [--samples N] [--out DIR] [--seed S] [--full-max LEN] [--batch-size B]

The forgetting curve (Liu, Zhao et al., EMNLP 2024, arXiv 2410.04727). For each length L and
sample, a random string R of L/2 token ids is drawn from the model's text vocabulary (ids below
the model's real vocabulary and the tokenizer's size, without the CoMeT special ids, the
tokenizer's special tokens or vocabulary padding rows), and scored in two settings, both L
tokens long, both over the second half only, with teacher forcing:

  copy: R R   the second R can be copied from what the model remembers of the first;
  LM:   P R   P is another random string of L/2 ids: nothing to copy, R is unpredictable.

Accuracy is the fraction of the second half's tokens that are the argmax of the logits at the
position before them. copy - LM is what memory adds. From the curve (pure function
`memory_lengths`, our reading of the paper's §3):

  fine-grained memory length: the longest L such that copy accuracy >= --fine-threshold
    (default 0.99: "perfect" copying) at L and at every shorter length measured;
  coarse-grained memory length: the longest L such that copy - LM >= --coarse-margin
    (default 0.01: copy still measurably above LM) at L and every shorter length.
Beyond the coarse length the model is in "amnesia": copying is no better than language
modelling. Either is null when already the shortest length fails. The paper's words: "fine-grained
memory where the model achieves 99% token replication accuracy, coarse-grained memory where copy
accuracy surpasses LM accuracy, and the amnesia area where the model completely ignores the
prefix". Two conventions of the authors' code differ from ours: its x-axis is the length of the
copied string (our L/2), and it scores the last half of the second copy only (we score all of
it); it also reports a paired t-test of copy vs LM per length, which we do not.

comet mode scores chunk by chunk, carrying only the memories (constant memory at any length,
comet_jax/infer/argmax.py); full mode is the plain backbone over the whole sequence, run only
up to --full-max tokens (default 16k); longer lengths are recorded as skipped with the reason.

Writes OUT/results.json (settings, the curve: per length copy_accuracy, lm_accuracy,
difference, samples, seconds, peak_rss_mb, device_peak_mb; the memory lengths) and OUT/forgetting.png
(accuracy against length, log x), both atomically after every length ("complete": false until
the last). An OUT whose results.json already holds a curve is refused, and so is an OUT
another command is using (one at a time per OUT). The last stdout line is one JSON object.

From a checkout without installing: `python -m eval.forgetting` (the same code).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from comet_jax.evals.common import (add_model_options, atomic_write, check_not_a_run_dir, check_out_dir,
                                    format_length, hold_out_dir, parse_length, save_png)
from comet_jax.resources import device_peak_mb

DEFAULT_LENGTHS = "1k,4k,16k,64k,256k,1M"
FINE_THRESHOLD, COARSE_MARGIN = 0.99, 0.01
EXIT_USAGE = 2
RESULTS, PLOT = "results.json", "forgetting.png"


# ----------------------------------------------------------------------------- pure parts

def parse_lengths(text: str) -> list[int]:
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError("--lengths is empty")
    lengths = [parse_length(s) for s in items]
    for n in lengths:
        if n < 2 or n % 2:  # two halves of equal length
            raise ValueError(f"bad length {format_length(n)}: must be even and >= 2 (two halves of L/2 tokens)")
    if len(set(lengths)) != len(lengths):
        raise ValueError(f"--lengths repeats a value: {text}")
    return sorted(lengths)


def text_vocab(real_vocab: int, reserved, tokenizer=None) -> np.ndarray:
    """Ids a random string may use: below real_vocab (and the tokenizer's size, when one is given,
    so embedding rows no tokenizer can produce are left out), minus `reserved` (the CoMeT ids)
    and the tokenizer's special tokens (BOS, EOS, chat markers: never in plain text)."""
    n = real_vocab
    special: set[int] = set(reserved)
    if tokenizer is not None:
        n = min(n, tokenizer.get_vocab_size())
        added = getattr(tokenizer, "get_added_tokens_decoder", None)
        if added is not None:
            special |= {i for i, t in added().items() if getattr(t, "special", False)}
    ids = np.setdiff1d(np.arange(n), np.fromiter(special, np.int64, len(special)))
    if ids.size < 2:
        raise ValueError(f"only {ids.size} text token id(s) to draw random strings from")
    return ids


def make_pair(rng: np.random.Generator, vocab: np.ndarray, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(copy, lm) sequences of `length` tokens: R R and P R, P a random string other than R."""
    half = length // 2
    r = rng.choice(vocab, half)
    p = rng.choice(vocab, half)
    while np.array_equal(p, r):  # only likely for tiny halves
        p = rng.choice(vocab, half)
    return np.concatenate([r, r]).astype(np.int32), np.concatenate([p, r]).astype(np.int32)


def samples_for(seed: int, length: int, samples: int, vocab: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The pairs of one length (their own seed: a length's numbers do not depend on the others),
    drawn one at a time as they are consumed: at 1M tokens a pair holds ~12 MB of host memory,
    and scoring holds only the batch it works on."""
    rng = np.random.default_rng([seed, length])
    return (make_pair(rng, vocab, length) for _ in range(samples))


def vocab_digest(x) -> str:
    import hashlib

    data = x.encode() if isinstance(x, str) else np.asarray(x, np.int64).tobytes()
    return "sha256:" + hashlib.sha256(data).hexdigest()[:16]


def second_half_correct(seq: np.ndarray, index: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """(correct, scored) over predictions `pred` made after raw positions `index` (-1: none):
    only targets in the second half (positions L/2 .. L-1) count."""
    n = len(seq)
    scored = (index >= n // 2 - 1) & (index < n - 1)
    target = seq[np.where(scored, index + 1, 0)]
    return int(np.sum(scored & (pred == target))), int(np.sum(scored))


def memory_lengths(curve: list[dict], fine_threshold: float = FINE_THRESHOLD,
                   coarse_margin: float = COARSE_MARGIN) -> tuple[int | None, int | None]:
    """(fine, coarse) memory lengths of a curve (entries with length, copy_accuracy, lm_accuracy;
    skipped entries, copy_accuracy None, are ignored): the longest length up to which every
    measured length keeps copy >= fine_threshold, resp. copy - lm >= coarse_margin."""
    fine = coarse = None
    fine_on = coarse_on = True
    for e in sorted((e for e in curve if e.get("copy_accuracy") is not None), key=lambda e: e["length"]):
        fine_on = fine_on and e["copy_accuracy"] >= fine_threshold
        coarse_on = coarse_on and e["copy_accuracy"] - e["lm_accuracy"] >= coarse_margin
        fine = e["length"] if fine_on else fine
        coarse = e["length"] if coarse_on else coarse
    return fine, coarse


# ----------------------------------------------------------------------------- running

def score_length(params, model, comet, mode: str, pairs: Iterable, batch_size: int, block_chunks: int,
                 progress=None, n_pairs: int | None = None) -> tuple[float, float]:
    """(copy accuracy, lm accuracy) over the pairs of one length. `pairs` may be an iterator
    (then n_pairs is its length): its sequences are drawn one batch at a time."""
    from comet_jax.infer.argmax import comet_predictions, full_predictions

    n_rows = 2 * (len(pairs) if n_pairs is None else n_pairs)
    rows = (s for pair in pairs for s in pair)  # copy, lm, copy, lm, ...
    totals = np.zeros((2, 2), np.int64)  # (copy, lm) x (correct, scored)
    bs = min(batch_size, n_rows)  # padded rows would cost as much as real ones
    i = 0
    while part := list(itertools.islice(rows, bs)):
        counts = np.zeros((bs, 2), np.int64)
        if mode == "comet":
            def on_block(index, pred, part=part, counts=counts):
                for r, seq in enumerate(part):
                    counts[r] += second_half_correct(seq, index[r], pred[r])
                if progress is not None:
                    progress(int(np.sum(index[: len(part)] >= 0)))

            comet_predictions(params, part, bs, model, comet, block_chunks, on_block=on_block)
        else:
            pred = full_predictions(params, part, bs, model)
            for r, seq in enumerate(part):
                counts[r] += second_half_correct(seq, np.arange(len(seq)), pred[r, : len(seq)])
            if progress is not None:
                progress(sum(len(s) for s in part))
        for r in range(len(part)):
            totals[(i + r) % 2] += counts[r]
        i += len(part)
    (copy_ok, copy_n), (lm_ok, lm_n) = totals
    return copy_ok / copy_n, lm_ok / lm_n


def summarize(base: dict, curve: list[dict], n_lengths: int, fine_threshold: float, coarse_margin: float) -> dict:
    fine, coarse = memory_lengths(curve, fine_threshold, coarse_margin)
    return {**base, "fine_memory_length": fine, "coarse_memory_length": coarse,
            "complete": len(curve) == n_lengths, "curve": curve}


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [e for e in results["curve"] if e.get("copy_accuracy") is not None]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    if pts:
        xs = [e["length"] for e in pts]
        ax.plot(xs, [e["copy_accuracy"] for e in pts], "o-", label="copy (R R)")
        ax.plot(xs, [e["lm_accuracy"] for e in pts], "s-", label="LM (P R)")
        ax.plot(xs, [e["difference"] for e in pts], "--", color="grey", label="copy - LM")
        ax.set_xscale("log", base=2)
        ax.set_xticks(xs, [format_length(n) for n in xs])
    for key, style in (("fine_memory_length", ":"), ("coarse_memory_length", "-.")):
        if results.get(key):
            ax.axvline(results[key], color="k", linestyle=style, linewidth=0.8,
                       label=f"{key.split('_')[0]} memory {format_length(results[key])}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("sequence length L (tokens; second half scored)")
    ax.set_ylabel("teacher-forced accuracy")
    partial = "" if results.get("complete", True) else ", partial"
    ax.set_title(f"forgetting curve ({results['mode']}{partial})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_png(fig, path)


class OutputError(Exception):
    """Writing the results failed (the last results.json written is intact)."""


def save_results(results: dict, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write(out / RESULTS, json.dumps(results, indent=1).encode())
        write_plot(results, out / PLOT)
    except OSError as e:
        raise OutputError(f"cannot write the results to {out}: {e}") from None


def previous_curve(path: Path, settings: dict, resume: bool) -> dict[int, dict]:
    """The measured lengths of an earlier run in `path` to keep, by length; ValueError (one line)
    when there are some but no --resume, or they were made with other settings. (Hours of
    results are never overwritten silently.)"""
    if not path.exists():
        return {}
    try:
        old = json.loads(path.read_text())
        done = {e["length"]: e for e in old["curve"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path} exists but is not a results file of comet-forgetting: move it away or use "
                         "another --out") from None
    if not done:
        return {}
    if not resume:
        raise ValueError(f"{path} already holds {len(done)} length(s) of an earlier run: pass --resume to "
                         "continue it, or another --out")
    for key in sorted(set(settings) | set(old.get("settings") or {})):
        if (old.get("settings") or {}).get(key) != settings.get(key):
            raise ValueError(f"cannot resume from {path}: it was made with {key} "
                             f"{(old.get('settings') or {}).get(key)!r}, this run has {settings.get(key)!r}")
    return done


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="comet-forgetting", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="converted or exported checkpoint directory")
    ap.add_argument("--mode", choices=("comet", "full"), default="comet",
                    help="comet: chunked with memory, constant memory; full: plain backbone (up to --full-max)")
    ap.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"total lengths L, even (default {DEFAULT_LENGTHS})")
    ap.add_argument("--samples", type=int, default=4, help="random strings per length (default 4)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random strings (default 0)")
    ap.add_argument("--out", default="runs/forgetting", help="output directory (default runs/forgetting)")
    ap.add_argument("--full-max", default="16k", help="full mode: longest length run (default 16k)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run whose OUT/results.json exists (same settings): skip its lengths")
    ap.add_argument("--tokenizer", help="byte, passkey or a tokenizer.json path: only limits the vocabulary "
                    "(its size, its special tokens); default: the checkpoint's, if any")
    ap.add_argument("--batch-size", type=int, default=2, help="sequences per compiled batch (default 2)")
    ap.add_argument("--block-chunks", type=int, default=8, help="comet mode: chunks per compiled step (default 8)")
    ap.add_argument("--fine-threshold", type=float, default=FINE_THRESHOLD,
                    help=f"copy accuracy that counts as exact memory (default {FINE_THRESHOLD})")
    ap.add_argument("--coarse-margin", type=float, default=COARSE_MARGIN,
                    help=f"copy - LM accuracy that counts as some memory (default {COARSE_MARGIN})")
    add_model_options(ap)
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        lengths = parse_lengths(args.lengths)
        full_max = parse_length(args.full_max)
        for name in ("samples", "batch_size", "block_chunks"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if not 0 < args.fine_threshold <= 1 or not 0 < args.coarse_margin <= 1:
            raise ValueError("--fine-threshold and --coarse-margin must be in (0, 1]")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    return hold_out_dir(args.out, lambda: _main(args, lengths, full_max), "comet-forgetting")


def _main(args, lengths: list[int], full_max: int) -> int:
    """The work of main, holding --out."""
    from tqdm import tqdm

    from comet_jax import build, checkpoint
    from comet_jax.config import ConfigError
    from comet_jax.data.jsonl import comet_token_names
    from comet_jax.evals.passkey import PeakMemory, checkpoint_files
    from comet_jax.io.tokenizer import load_tokenizer, tokenizer_by_name

    try:
        out = check_out_dir(args.out)  # before hours of work, not after them
        check_not_a_run_dir(args.checkpoint)
        model, comet, meta = build.from_checkpoint(args.checkpoint, chunk_size=args.chunk_size, dtype=args.dtype,
                                                   attention=args.attention)
        tokenizer = tokenizer_by_name(args.tokenizer) if args.tokenizer else load_tokenizer(args.checkpoint, meta)
        vocab = text_vocab(model.real_vocab, comet_token_names(comet), tokenizer)
        comet_mode = args.mode == "comet"
        to_str = getattr(tokenizer, "to_str", None)
        # everything that decides a length's numbers, which a resumed run must share
        settings = {"checkpoint": str(Path(args.checkpoint).resolve()),
                    "checkpoint_files": checkpoint_files(args.checkpoint), "mode": args.mode, "seed": args.seed,
                    "samples": args.samples, "full_max": None if comet_mode else full_max, "dtype": model.dtype,
                    "chunk_size": comet.chunk_size if comet_mode else None, "text_vocab": vocab_digest(vocab),
                    "tokenizer": vocab_digest(to_str()) if to_str else type(tokenizer).__name__}
        done = previous_curve(out / RESULTS, settings, args.resume)
        lengths = sorted(set(lengths) | set(done))  # a resumed run may add lengths, never drop any
        params = checkpoint.load_params(args.checkpoint)
    except (checkpoint.CheckpointError, ConfigError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    base = {"checkpoint": str(args.checkpoint), "settings": settings, "mode": args.mode, "seed": args.seed,
            "samples": args.samples, "lengths": lengths,
            "full_max": None if comet_mode else full_max, "dtype": model.dtype,
            "chunk_size": comet.chunk_size if comet_mode else None, "text_vocab_size": int(vocab.size),
            "fine_threshold": args.fine_threshold, "coarse_margin": args.coarse_margin,
            "definitions": {"copy": "R R", "lm": "P R (P another random string)", "scored": "second half",
                            "fine_memory_length": "longest L with copy_accuracy >= fine_threshold at every L' <= L",
                            "coarse_memory_length": "longest L with copy - lm >= coarse_margin at every L' <= L"}}
    run = [n for n in lengths if (comet_mode or n <= full_max) and n not in done]
    total = 2 * args.samples * sum(run)
    print(f"forgetting ({args.mode}): lengths {[format_length(n) for n in lengths]}, {args.samples} samples each, "
          f"{total:,} tokens, {vocab.size} text ids"
          + (f"; {len(done)} length(s) done before (--resume)" if done else ""), file=sys.stderr, flush=True)
    curve: list[dict] = []
    try:
        with tqdm(total=total, unit="tok", unit_scale=True, disable=args.quiet, file=sys.stderr,
                  desc=f"forgetting {args.mode}") as bar:
            for n in lengths:
                if n in done:
                    curve.append(done[n])
                elif n not in run:
                    curve.append({"length": n, "copy_accuracy": None, "lm_accuracy": None, "difference": None,
                                  "samples": 0, "skipped": f"full mode runs up to --full-max "
                                  f"{format_length(full_max)} tokens (memory grows with the length)"})
                else:
                    pairs = samples_for(args.seed, n, args.samples, vocab)
                    t0 = time.perf_counter()
                    with PeakMemory() as mem:
                        copy, lm = score_length(params, model, comet, args.mode, pairs, args.batch_size,
                                                args.block_chunks, progress=bar.update, n_pairs=args.samples)
                    curve.append({"length": n, "copy_accuracy": float(copy), "lm_accuracy": float(lm),
                                  "difference": float(copy - lm), "samples": args.samples,
                                  "seconds": round(time.perf_counter() - t0, 3), "peak_rss_mb": round(mem.peak, 1),
                                  "device_peak_mb": device_peak_mb()})  # None on CPU
                save_results(summarize(base, curve, len(lengths), args.fine_threshold, args.coarse_margin), out)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished length is in {out / RESULTS}; the same command with --resume "
              "continues the run", file=sys.stderr)
        return 130
    results = summarize(base, curve, len(lengths), args.fine_threshold, args.coarse_margin)
    for e in curve:
        if e["copy_accuracy"] is None:
            print(f"{format_length(e['length']):>6}: skipped ({e['skipped']})", file=sys.stderr)
        else:
            print(f"{format_length(e['length']):>6}: copy {e['copy_accuracy']:.4f}  lm {e['lm_accuracy']:.4f}  "
                  f"({e['seconds']:.1f}s, peak {e['peak_rss_mb']:.0f} MB)", file=sys.stderr)
    print(f"wrote {out / RESULTS} and {out / PLOT}", file=sys.stderr)
    print(json.dumps({k: results[k] for k in ("mode", "fine_memory_length", "coarse_memory_length")}
                     | {"curve": [{k: e[k] for k in ("length", "copy_accuracy", "lm_accuracy")} for e in curve]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
