"""The training data pipeline (grain): sources -> documents -> chunk plans -> laid-out batches.

Sources (`comet_jax/data/sources.py`) are random-access record sources: passkey, JSONL,
ArrayRecord, concatenations and weighted mixtures of them.

Per record (`make_loader`): documents shorter than 2 tokens are dropped and counted
(`stats["short"]`); each document is truncated to `seq_len` and becomes ONE sequence.
Packing several documents into one sequence is deliberately not implemented: CoMeT's memory
runs from chunk to chunk across the whole sequence, so a packed sequence would carry one
document's memory into the next (attention masks cannot stop it), and the chunk plans would
straddle document boundaries. In comet mode each sequence gets a chunk plan drawn by a
`PlannerMix` with the record's rng (grain's per-record rng, a function of (seed, position in
the sampled stream)), so plans are deterministic and survive a restart.

Batches are dicts of numpy arrays with FIXED shapes for a given (seq_len, batch_size,
comet config, planner mix), so a jitted train step compiles once:

- mode "comet": `layout.ChunkBatch.as_dict()` with N = `num_chunks_for(...)` chunks (or the
  `num_chunks` given to `make_loader`),
  chunk-major: tokens/valid/positions [N, B, S], labels [N, B, C], first/live [N, B];
  plus n_tokens [] int32 (labeled tokens in the batch).
- mode "full": tokens [B, seq_len] int32 (0-padded), lengths [B] int32,
  labels [B, seq_len] int32 (IGNORE where unlabeled), n_tokens [] int32.

A final partial batch (finite epochs) is padded with empty rows (no live chunks, no labels).
The order of documents in batches depends on `num_workers` (grain gives each worker every
W-th record and each worker makes whole batches), so a state restores only into a loader
with the same arguments, worker count included (grain checks it).
"""

from __future__ import annotations

import dataclasses
import gc
import json
from typing import Any, Sequence

import grain
import numpy as np

from comet_jax import layout
from comet_jax.chunking import PlannerMix, fixed
from comet_jax.config import MODES, SOURCES, CometConfig
from comet_jax.data.sources import (ArrayRecordSource, ConcatSource, DataError, JsonlSource, MixtureSource,
                                    PasskeySource, make_source)
from comet_jax.loss import IGNORE


__all__ = ["ArrayRecordSource", "ConcatSource", "DataError", "JsonlSource", "Loader", "MODES", "MixtureSource",
           "PasskeySource", "SOURCES", "make_loader", "make_source", "num_chunks_for"]


# --------------------------------------------------------------------------- chunk counts

def num_chunks_for(seq_len: int, comet_cfg: CometConfig, planner_mix: PlannerMix | None = None,
                   stages: int = 1) -> int:
    """Most chunks any planner of the mix can make for a sequence of at most `seq_len` tokens.

    fixed / right_aligned: ceil(seq_len / C); uniform / random: ceil(seq_len / min(min_size, C));
    semantic: two consecutive chunks hold more than C tokens together, so at most
    2 * ((seq_len - 1) // (C + 1)) + 2 (and never more than seq_len). Used as the fixed chunk count
    of every batch, so the train step compiles once. With `stages` (the layer pipeline's
    mesh.stage) it is rounded up to a multiple of them: every stage gets the same number of
    chunks, the extra ones fully masked.
    """
    C = comet_cfg.chunk_size
    mix = planner_mix or PlannerMix()
    best = 0
    for name in mix.probabilities():
        if name in ("fixed", "right_aligned"):
            n = -(-seq_len // C)
        elif name in ("uniform", "random"):
            n = -(-seq_len // min(mix.min_size, C))
        else:  # semantic
            n = 1 if seq_len <= C else min(seq_len, 2 * ((seq_len - 1) // (C + 1)) + 2)
        best = max(best, n)
    return -(-best // stages) * stages


# --------------------------------------------------------------------------- transforms

class _DropAndCount(grain.transforms.Filter):
    """Drops bad and short (< 2 tokens) documents; the next kept document carries the counts
    (so they reach the batch from whichever process read them)."""

    def __init__(self):
        self.reset()

    def reset(self):
        self._bad = self._short = 0

    def filter(self, element: dict[str, Any]) -> bool:
        if "bad" in element:
            self._bad += 1
            return False
        if len(element["input_ids"]) < 2:
            self._short += 1
            return False
        element["n_bad"], element["n_short"] = self._bad, self._short
        self.reset()
        return True


@dataclasses.dataclass
class _Prepare(grain.transforms.RandomMap):
    """Truncate to seq_len and (comet mode) draw the chunk plan with the record's rng."""

    seq_len: int
    chunk_size: int
    planner_mix: PlannerMix
    mode: str
    max_chunks: int | None = None  # a plan with more chunks is redrawn (see make_loader)

    def plan(self, ids: np.ndarray, rng: np.random.Generator) -> list[int]:
        for _ in range(_REDRAWS):
            plan = self.planner_mix.plan(ids, self.chunk_size, rng)
            if self.max_chunks is None or len(plan) <= self.max_chunks:
                return plan
        return fixed(len(ids), self.chunk_size)  # fits: max_chunks >= ceil(seq_len / C)

    def random_map(self, element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        ids = np.asarray(element["input_ids"], np.int32)[: self.seq_len]
        mask = element.get("loss_mask")
        out = {"input_ids": ids, "n_bad": element.get("n_bad", 0), "n_short": element.get("n_short", 0)}
        if mask is not None:
            out["loss_mask"] = np.asarray(mask, bool)[: self.seq_len]
        if self.mode == "comet":
            out["plan"] = np.asarray(self.plan(ids, rng), np.int32)
        return out


@dataclasses.dataclass
class _Collate:
    """A list of prepared documents -> one batch dict (fixed shapes; missing rows are empty)."""

    batch_size: int
    seq_len: int
    mode: str
    comet_cfg: CometConfig | None
    num_chunks: int

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, np.ndarray]:
        items = list(items)
        seqs = [it["input_ids"] for it in items]
        masks = [it.get("loss_mask") for it in items]
        has_mask = any(m is not None for m in masks)
        masks = [np.ones(len(s), bool) if m is None else m for s, m in zip(seqs, masks)]
        stats = {"n_bad": np.int64(sum(int(it["n_bad"]) for it in items)),
                 "n_short": np.int64(sum(int(it["n_short"]) for it in items)),
                 "n_docs": np.int64(len(items))}
        pad = self.batch_size - len(items)
        seqs += [np.zeros(0, np.int32)] * pad
        masks += [np.zeros(0, bool)] * pad
        if self.mode == "comet":
            plans = [list(map(int, it["plan"])) for it in items] + [[]] * pad
            cb = layout.build(seqs, plans, self.comet_cfg, num_chunks=self.num_chunks,
                              loss_masks=masks if has_mask else None)
            out = cb.as_dict()
            out["n_tokens"] = np.asarray(np.sum(cb.labels != IGNORE), np.int32)
        else:
            b, t = self.batch_size, self.seq_len
            tokens = np.zeros((b, t), np.int32)
            labels = np.full((b, t), IGNORE, np.int32)
            lengths = np.zeros(b, np.int32)
            for j, (s, m) in enumerate(zip(seqs, masks)):
                n = len(s)
                tokens[j, :n], lengths[j] = s, n
                if n > 1:
                    labels[j, : n - 1] = np.where(m[1:], s[1:], IGNORE)
            out = dict(tokens=tokens, lengths=lengths, labels=labels,
                       n_tokens=np.asarray(np.sum(labels != IGNORE), np.int32))
        out.update({"_" + k: v for k, v in stats.items()})
        return out


# --------------------------------------------------------------------------- loader

_STAT_KEYS = ("bad", "short", "docs", "batches")
_REDRAWS = 8


class Loader:
    """Iterator over batches (see the module docstring) backed by a `grain.DataLoader`.

    `get_state()` -> bytes; `set_state(state)` on a loader built with the same arguments
    resumes exactly after the batch the state was taken at. `stats` counts, over this run
    (restored with the state): "bad" (skipped bad records), "short" (dropped documents of
    < 2 tokens), "docs" (documents in batches), "batches".
    """

    def __init__(self, data_loader: grain.DataLoader, drop: _DropAndCount, num_chunks: int | None):
        self.data_loader = data_loader
        self.num_chunks = num_chunks
        self._drop = drop
        self._it = iter(data_loader)
        self.stats = dict.fromkeys(_STAT_KEYS, 0)

    def __iter__(self) -> "Loader":
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._it is None:
            raise ValueError("the loader is closed")
        # Plain arrays (worker processes hand back shared-memory views; copying frees them now).
        try:
            raw = next(self._it)
        except StopIteration:
            # Dropped records after the last kept one (end of a finite run) carry no batch;
            # in-process they are still counted here (with workers they are not counted).
            self.stats["bad"] += self._drop._bad
            self.stats["short"] += self._drop._short
            self._drop.reset()
            raise
        batch = {k: np.array(v) for k, v in raw.items()}
        for k in ("bad", "short", "docs"):
            self.stats[k] += int(batch.pop("_n_" + k))
        self.stats["batches"] += 1
        return batch

    def get_state(self) -> bytes:
        return json.dumps({"grain": self._it.get_state().decode(), "stats": self.stats}).encode()

    def set_state(self, state: bytes | str | dict) -> None:
        if isinstance(state, (bytes, bytearray)):
            state = state.decode()
        if isinstance(state, str):
            state = json.loads(state)
        self._drop.reset()
        self._it.set_state(state["grain"].encode())
        self.stats = {k: int(state["stats"].get(k, 0)) for k in _STAT_KEYS}

    def close(self) -> None:
        """Stop the worker processes (if any) and free their buffers; idempotent."""
        if self._it is None:
            return
        inner = getattr(self._it, "_iterator", None)
        if inner is not None and hasattr(inner, "close"):
            inner.close()
        self._it = None
        gc.collect()  # drop the closed pipeline's iterators now, not at interpreter exit

    def __enter__(self) -> "Loader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_loader(source, *, seq_len: int, batch_size: int, comet_cfg: CometConfig | None = None,
                planner_mix: PlannerMix | None = None, mode: str = "comet", seed: int = 0,
                shuffle: bool = True, shard_index: int = 0, shard_count: int = 1, num_workers: int = 0,
                num_epochs: int | None = None, worker_buffer_size: int = 1,
                num_chunks: int | None = None) -> Loader:
    """A `Loader` over `source` for this host's shard (grain ShardOptions(shard_index, shard_count)).

    `batch_size` is per host. mode "comet" needs `comet_cfg`; `planner_mix` defaults to fixed
    chunks; `num_chunks` (the fixed N of every batch) defaults to
    `num_chunks_for(seq_len, comet_cfg, planner_mix)`, the most the planners can make. That
    bound is large for "random"/"uniform" with a small min_size (seq_len / min_size chunks,
    mostly padding); a smaller `num_chunks` (at least ceil(seq_len / C)) may be given: a plan
    with more chunks is redrawn (same record rng, up to 8 times), then replaced by fixed chunks.
    `seed` (a 32-bit non-negative int) drives the shuffle and the per-record chunk plans.
    `num_epochs=None` repeats forever.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index={shard_index} outside [0, shard_count={shard_count})")
    planner_mix = planner_mix or PlannerMix()
    chunk_size = 0
    if mode == "comet":
        if comet_cfg is None:
            raise ValueError("mode 'comet' needs comet_cfg")
        chunk_size = comet_cfg.chunk_size
        bound = num_chunks_for(seq_len, comet_cfg, planner_mix)
        least = -(-seq_len // chunk_size)
        if num_chunks is None:
            num_chunks = bound
        elif num_chunks < least:
            raise ValueError(f"num_chunks={num_chunks} < ceil(seq_len / chunk_size) = {least}: a sequence of "
                             f"seq_len={seq_len} tokens cannot fit")
        max_chunks = num_chunks if num_chunks < bound else None
    else:
        num_chunks = max_chunks = None
    if num_workers > 0:
        from absl import flags
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
    # Every host reads a contiguous 1/shard_count of the records, the same number each (a
    # remainder of len(source) % shard_count records is left out), so hosts step together.
    shard = grain.sharding.ShardOptions(shard_index=shard_index, shard_count=shard_count, drop_remainder=True)
    sampler = grain.samplers.IndexSampler(len(source), shard_options=shard, shuffle=shuffle,
                                          num_epochs=num_epochs, seed=int(seed))
    drop = _DropAndCount()
    ops = [drop, _Prepare(seq_len, chunk_size, planner_mix, mode, max_chunks),
           grain.transforms.Batch(batch_size, drop_remainder=False,
                                  batch_fn=_Collate(batch_size, seq_len, mode, comet_cfg, num_chunks or 0))]
    dl = grain.DataLoader(data_source=source, sampler=sampler, operations=ops, worker_count=num_workers,
                          worker_buffer_size=worker_buffer_size, shard_options=shard)
    return Loader(dl, drop, num_chunks)
