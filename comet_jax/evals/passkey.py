"""comet-passkey --checkpoint DIR [--lengths 4k,16k,64k,256k,1M] [--depths 0,0.25,0.5,0.75,1]
               [--samples N] [--seed S] [--jitter N] [--mode comet|full] [--out DIR] [--resume]

Passkey retrieval: for every (length, depth) cell, `samples` prompts of `length` tokens
(task line, repeated filler, the needle "The pass key is {key}. Remember it. {key} is the
pass key." after `depth` of the filler, then "What is the pass key? The pass key is"), a
random 5-digit key each; greedy generation; a sample is correct when the first number in
the generated text starts with exactly the key's digits ("accuracy"); "exact" also asks
that the number stop there (five digits, then no digit: the answer format of a model trained
with data.passkey.end). Lengths take k (x1024) and M (x1024^2). --prompt-variant held_out
uses filler sentences and a question wording that no training example has.

Every prompt of a cell has the same length, so the chunk boundaries cut the needle and the
answer at one place per (length, depth): a cell measures one alignment. --jitter N draws each
prompt's length from [length - N, length] instead (whole filler sentences either way), which
moves the needle (at depths > 0) and the answer relative to the chunk grid; with N at least
the chunk size a cell averages over the alignments.

comet mode runs CoMeT's constant-memory generation; full mode is the plain backbone with a
KV cache over the whole prompt (the baseline; memory and time grow with the length).

Writes OUT/results.json (per cell: accuracy, samples, prompt tokens, seconds, peak memory)
and OUT/heatmap.png (depths x lengths, accuracy colour scale), both again after every cell
(atomically), so an interrupted run keeps its finished cells ("complete": false). --resume
continues such a run: it refuses a results.json made with other settings (checkpoint path
and the names, sizes and times of its files, tokenizer, mode, seed, samples, lengths,
depths, dtype, chunk size, layout), skips the cells it holds and ends with the results.json
of an uninterrupted run. Without --resume, an OUT whose results.json holds cells is refused.
One command at a time per OUT: a second is refused naming the first (comet_jax/evals/common.py
hold_out_dir); a training run directory as --checkpoint is refused naming RUN_DIR/model.

From a checkout without installing: `python -m eval.passkey` (the same code).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import threading
import time
from pathlib import Path

from comet_jax.evals.common import (add_model_options, atomic_write, check_not_a_run_dir, check_out_dir,
                                    format_length, hold_out_dir, parse_length, save_png)
from comet_jax.resources import device_peak_mb, rss_bytes

DEFAULT_LENGTHS = "4k,16k,64k,256k,1M"
DEFAULT_DEPTHS = "0,0.25,0.5,0.75,1"
EXIT_USAGE = 2
RESULTS, HEATMAP = "results.json", "heatmap.png"


def parse_list(text: str, parse, name: str) -> list:
    items = [s for s in text.split(",") if s.strip()]
    if not items:
        raise ValueError(f"--{name} is empty")
    return [parse(s) for s in items]


def parse_depth(text: str) -> float:
    try:
        d = float(text)
    except ValueError:
        raise ValueError(f"bad depth {text!r}: use numbers in [0, 1]") from None
    if not 0 <= d <= 1:
        raise ValueError(f"bad depth {text!r}: must be in [0, 1]")
    return d


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="comet-passkey", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--checkpoint", required=True, help="converted or exported checkpoint directory")
    ap.add_argument("--lengths", default=DEFAULT_LENGTHS, help=f"prompt lengths in tokens (default {DEFAULT_LENGTHS})")
    ap.add_argument("--depths", default=DEFAULT_DEPTHS, help=f"needle depths in [0, 1] (default {DEFAULT_DEPTHS})")
    ap.add_argument("--samples", type=int, default=5, help="prompts per (length, depth) cell (default 5)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the keys (default 0)")
    ap.add_argument("--jitter", type=int, default=0,
                    help="each prompt's length uniform in [length - N, length] tokens: varies where the chunk "
                         "boundaries cut the needle and the answer (default 0: one length per cell)")
    ap.add_argument("--prompt-variant", choices=("train", "held_out"), default="train",
                    help="train: the training texts; held_out: other filler sentences and question (default train)")
    ap.add_argument("--mode", choices=("comet", "full"), default="comet",
                    help="comet: constant-memory CoMeT generation; full: plain backbone, KV cache over everything")
    ap.add_argument("--out", default="runs/passkey", help="output directory (default runs/passkey)")
    ap.add_argument("--resume", action="store_true",
                    help="continue the run whose OUT/results.json exists (same settings): skip its cells")
    ap.add_argument("--tokenizer", help="byte, passkey or a tokenizer.json path (default: the checkpoint's)")
    ap.add_argument("--batch-size", type=int, default=8, help="prompts per compiled batch (default 8)")
    add_model_options(ap)
    ap.add_argument("--block-chunks", type=int, default=8, help="closed chunks per compiled prefill step")
    ap.add_argument("--official-layout", action="store_true",
                    help="generate as the official code does: its chunk layout and its decode-time temp beacons "
                         "(docs/design.md §1.7)")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


class PeakMemory:
    """Peak resident memory of this process while inside the `with` block (sampled), in MB."""

    def __init__(self, every: float = 0.05):
        self.every, self.peak, self._stop = every, 0.0, threading.Event()

    @staticmethod
    def rss_mb() -> float:
        return rss_bytes() / 2 ** 20

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.rss_mb())

    def __enter__(self):
        self.peak = self.rss_mb()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.rss_mb())


def first_number(text: str) -> str | None:
    m = re.search(r"\d+", text)
    return m.group(0) if m else None


def is_correct(generated: str, key: str) -> bool:
    """The first number generated starts with the key's digits, exactly. (A model trained on the
    answer alone never learned where to stop, so digits after the key are not counted.)"""
    number = first_number(generated)
    return number is not None and number[: len(key)] == key


def is_exact(generated: str, key: str) -> bool:
    """The first number generated is exactly the key (nothing but its digits)."""
    return first_number(generated) == key


def prefix_ids(tokenizer) -> list[int]:
    """The ids the tokenizer puts before any text (a BOS token), if it adds any."""
    try:
        return list(tokenizer.encode("", add_special_tokens=True).ids)
    except TypeError:
        return []


def evaluate(gen, tokenizer, lengths, depths, samples, seed, batch_size, progress=None, done=None,
             on_cell=None, variant="train", jitter=0):
    """Run every cell; returns the list of cell dicts (see module docstring), in grid order.
    jitter: each prompt's length uniform in [length - jitter, length].
    done: cells already evaluated, by (length, depth), taken as they are (each cell has its
    own keys' seed, so skipping some changes no other); on_cell(cells so far) after each new one."""
    import numpy as np

    from comet_jax.data.passkey import build_prompt, random_key
    from comet_jax.infer.generate import Sampling

    prefix = prefix_ids(tokenizer)
    batch_size = min(batch_size, samples)  # padded rows would cost as much as real ones
    cells = []
    for li, length in enumerate(lengths):
        for di, depth in enumerate(depths):
            if done and (length, depth) in done:
                cells.append(done[length, depth])
                continue
            rng = np.random.default_rng([seed, li, di])
            keys = [random_key(rng) for _ in range(samples)]
            # drawn after the keys: jitter 0 leaves the keys (and the cells) of earlier runs unchanged
            sizes = rng.integers(length - jitter, length + 1, size=samples) if jitter else [length] * samples
            built = [build_prompt(tokenizer, int(n), depth, k, prefix_ids=prefix, variant=variant)
                     for n, k in zip(sizes, keys)]
            max_new = max(len(a) for _, a, _ in built) + 2
            correct, exact, outputs, t0 = 0, 0, [], time.perf_counter()
            with PeakMemory() as mem:
                for i in range(0, samples, batch_size):
                    part = built[i: i + batch_size]
                    seen = [0]

                    def report(n, rows=len(part)):  # the generator counts padded rows too
                        n = min(n * rows // batch_size, sum(len(p) for p, _, _ in part) - seen[0])
                        seen[0] += n
                        if progress is not None:
                            progress(n)

                    out = gen.generate([p for p, _, _ in part], Sampling(max_new_tokens=max_new),
                                       batch_size=batch_size, progress=report)
                    report(10 ** 12)  # the open chunks' tokens
                    for (_, _, info), toks in zip(part, out.tokens):
                        text = tokenizer.decode([int(t) for t in toks])
                        ok = is_correct(text, info["key"])
                        correct += ok
                        exact += is_exact(text, info["key"])
                        outputs.append({"key": info["key"], "output": text, "correct": bool(ok)})
            cells.append({"length": length, "depth": depth, "accuracy": correct / samples, "correct": correct,
                          "exact": exact / samples,
                          "samples": samples,
                          "prompt_tokens": int(round(np.mean([len(p) for p, _, _ in built]))),
                          "seconds": round(time.perf_counter() - t0, 3), "peak_memory_mb": round(mem.peak, 1),
                          "device_peak_memory_mb": device_peak_mb(), "examples": outputs[:3]})
            if on_cell is not None:
                on_cell(cells)
    return cells


def write_heatmap(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    lengths, depths = results["lengths"], results["depths"]
    acc = np.full((len(depths), len(lengths)), np.nan)
    for c in results["cells"]:
        acc[depths.index(c["depth"]), lengths.index(c["length"])] = c["accuracy"]
    fig, ax = plt.subplots(figsize=(1.2 * len(lengths) + 2.5, 0.6 * len(depths) + 1.8))
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="RdYlGn", aspect="auto")
    for (i, j), v in np.ndenumerate(acc):
        if not np.isnan(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(lengths)), [format_length(n) for n in lengths])
    ax.set_yticks(range(len(depths)), [f"{d:g}" for d in depths])
    ax.set_xlabel("prompt length (tokens)")
    ax.set_ylabel("needle depth")
    partial = "" if results.get("complete", True) else f", {len(results['cells'])} of {acc.size} cells"
    ax.set_title(results.get("title") or f"passkey accuracy ({results['mode']}{partial})")
    fig.colorbar(im, ax=ax, label="accuracy")
    fig.tight_layout()
    save_png(fig, path)


def write_json(obj: dict, path: Path) -> None:
    atomic_write(path, json.dumps(obj, indent=1).encode())


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def checkpoint_files(directory: str) -> str:
    """A digest of the names, sizes and modification times of a checkpoint's files: a checkpoint
    retrained or re-exported into the same directory differs, without reading its weights."""
    root = Path(directory)
    stats = sorted((str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns)
                   for p in root.rglob("*") if p.is_file())
    return _digest(json.dumps(stats))


def run_settings(args, lengths, depths, model, comet, tokenizer) -> dict:
    """Everything that decides a cell's numbers, which a resumed run must share. (Batch size and
    block chunks only group the same computation, so a resumed run may change them.)"""
    comet_mode = args.mode == "comet"
    to_str = getattr(tokenizer, "to_str", None)
    return {"checkpoint": str(Path(args.checkpoint).resolve()), "checkpoint_files": checkpoint_files(args.checkpoint),
            "tokenizer": _digest(to_str()) if to_str else type(tokenizer).__name__,
            "mode": args.mode, "prompt_variant": args.prompt_variant, "seed": args.seed, "samples": args.samples, "lengths": lengths, "depths": depths,
            "jitter": args.jitter,
            "dtype": model.dtype, "chunk_size": comet.chunk_size if comet_mode else None,
            "official_layout": args.official_layout if comet_mode else None}


def previous_cells(path: Path, settings: dict, resume: bool) -> dict:
    """The cells of an earlier run in `path` to keep, by (length, depth); ValueError (one line)
    when there are cells but no --resume, or they were made with other settings."""
    if not path.is_file():
        return {}
    try:
        old = json.loads(path.read_text())
        done = {(c["length"], c["depth"]): c for c in old["cells"]}
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError):
        raise ValueError(f"{path} exists but is not a results file of comet-passkey: move it away or use "
                         "another --out") from None
    if not done:
        return {}
    if not resume:  # hours of results: never overwritten silently
        raise ValueError(f"{path} already holds {len(done)} cell(s) of an earlier run: pass --resume to continue "
                         "it, or another --out")
    if not isinstance(old.get("settings"), dict):
        raise ValueError(f"cannot resume from {path}: written without its settings (an older comet-passkey); "
                         "use another --out")
    for key in list(settings) + [k for k in old["settings"] if k not in settings]:
        if old["settings"].get(key) != settings.get(key):
            raise ValueError(f"cannot resume from {path}: it was made with {key} {old['settings'].get(key)!r}, "
                             f"this run has {settings.get(key)!r}; use the same settings or another --out")
    return done


def summarize(base: dict, cells: list[dict], lengths: list[int], depths: list[float]) -> dict:
    """results.json: run settings, accuracies over the cells done (a length's only once all its
    depths are), the cells. Seconds are the cells' own, so a resumed run sums to what one run would."""
    rows = {n: row for n in lengths if len(row := [c for c in cells if c["length"] == n]) == len(depths)}
    by_length = {str(n): sum(c["accuracy"] for c in row) / len(depths) for n, row in rows.items()}
    exact = {str(n): sum(c.get("exact", 0.0) for c in row) / len(depths) for n, row in rows.items()}
    return {**base, "accuracy_by_length": by_length, "exact_by_length": exact,
            "accuracy": sum(c["accuracy"] for c in cells) / len(cells) if cells else None,
            "seconds": round(sum(c["seconds"] for c in cells), 1),
            "complete": len(cells) == len(lengths) * len(depths), "cells": cells}


class OutputError(Exception):
    """Writing the results failed (the last results.json written is intact)."""


def save_results(results: dict, out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_json(results, out / RESULTS)
        write_heatmap(results, out / HEATMAP)
    except OSError as e:
        raise OutputError(f"cannot write the results to {out}: {e}") from None


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        lengths = parse_list(args.lengths, parse_length, "lengths")
        depths = parse_list(args.depths, parse_depth, "depths")
        for name, items in (("lengths", lengths), ("depths", depths)):
            if len(set(items)) != len(items):  # a cell is named by its (length, depth)
                raise ValueError(f"--{name} repeats a value: {getattr(args, name)}")
        for name in ("samples", "batch_size", "block_chunks"):
            if getattr(args, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
        if args.jitter < 0:
            raise ValueError(f"--jitter must be >= 0 tokens, got {args.jitter}")
    except ValueError as e:
        ap.error(str(e))
    return hold_out_dir(args.out, lambda: _main(args, lengths, depths), "comet-passkey")


def _main(args, lengths: list[int], depths: list[float]) -> int:
    """The work of main, holding --out."""
    from tqdm import tqdm

    from comet_jax import build, checkpoint
    from comet_jax.config import ConfigError
    from comet_jax.data.passkey import build_prompt
    from comet_jax.infer.generate import Generator
    from comet_jax.io.tokenizer import load_tokenizer, tokenizer_by_name

    try:
        out = check_out_dir(args.out)  # before hours of work, not after them
        check_not_a_run_dir(args.checkpoint)
        model, comet, meta = build.from_checkpoint(args.checkpoint, chunk_size=args.chunk_size, dtype=args.dtype,
                                                   attention=args.attention)
        if args.tokenizer:
            tokenizer = tokenizer_by_name(args.tokenizer)
        else:
            tokenizer = load_tokenizer(args.checkpoint, meta)
            if tokenizer is None:
                raise ValueError(f"{args.checkpoint} has no tokenizer.json: pass --tokenizer (byte, passkey or a "
                                 "tokenizer.json path)")
        if tokenizer.get_vocab_size() > model.vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.get_vocab_size()} ids but the model only "
                             f"{model.vocab_size} embedding rows: wrong --tokenizer?")
        prefix = prefix_ids(tokenizer)
        for n in lengths:  # fail before any work when a length cannot hold the prompt
            try:
                build_prompt(tokenizer, n - args.jitter, 0.5, "00000", prefix_ids=prefix,
                             variant=args.prompt_variant)
            except ValueError as e:
                why = f" (length {n} minus --jitter {args.jitter})" if args.jitter else ""
                raise ValueError(f"{e}{why}") from None
        settings = run_settings(args, lengths, depths, model, comet, tokenizer)
        done = previous_cells(out / RESULTS, settings, args.resume)
        params = checkpoint.load_params(args.checkpoint)
    except (checkpoint.CheckpointError, ConfigError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE

    gen = Generator(params, model, comet, mode=args.mode, block_chunks=args.block_chunks,
                    official=args.official_layout)
    base = {"checkpoint": str(args.checkpoint), "mode": args.mode, "prompt_variant": args.prompt_variant,
            "seed": args.seed, "samples": args.samples, "jitter": args.jitter,
            "lengths": lengths, "depths": depths, "train": meta.get("train"),
            "chunk_size": comet.chunk_size if args.mode == "comet" else None, "settings": settings}
    # with --jitter, prompt lengths are uniform in [n - jitter, n]: their mean is n - jitter / 2
    total = sum(len(build_prompt(tokenizer, n - args.jitter // 2, 0.5, "00000", prefix_ids=prefix,
                                 variant=args.prompt_variant)[0])
                for n in lengths for d in depths if (n, d) not in done) * args.samples
    resumed = f"; {len(done)} of {len(lengths) * len(depths)} cells done before (--resume)" if done else ""
    if args.resume and not done:
        resumed = f"; nothing to resume in {out}"
    print(f"passkey ({args.mode}): lengths {[format_length(n) for n in lengths]}, depths {depths}, "
          f"{args.samples} samples per cell, {total:,} prompt tokens{resumed}", file=sys.stderr, flush=True)
    try:
        with tqdm(total=total, unit="tok", unit_scale=True, disable=args.quiet, file=sys.stderr,
                  desc=f"passkey {args.mode}") as bar:
            cells = evaluate(gen, tokenizer, lengths, depths, args.samples, args.seed, args.batch_size,
                             progress=bar.update, done=done,
                             on_cell=lambda cells: save_results(summarize(base, cells, lengths, depths), out),
                             variant=args.prompt_variant, jitter=args.jitter)
            bar.total = bar.n  # the estimate made way for the count (jitter draws each length)
        results = summarize(base, cells, lengths, depths)
        save_results(results, out)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"\ninterrupted: every finished cell is in {out / RESULTS}; the same command with --resume "
              "continues the run", file=sys.stderr)
        return 130
    print("exact match (starts with) by needle depth:", file=sys.stderr)
    for n in lengths:
        row = [c for c in cells if c["length"] == n]
        print(f"{format_length(n):>6}: " + "  ".join(f"d{c['depth']:g}={c.get('exact', 0.0):.2f} ({c['accuracy']:.2f})"
                                                     for c in row)
              + f"  ({sum(c['seconds'] for c in row):.1f}s, peak {max(c['peak_memory_mb'] for c in row):.0f} MB)",
              file=sys.stderr)
    print(f"wrote {out / RESULTS} and {out / HEATMAP}", file=sys.stderr)
    print(json.dumps({k: results[k] for k in ("mode", "prompt_variant", "accuracy", "accuracy_by_length",
                                              "exact_by_length", "seconds")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
