"""Host-side (numpy) builder of the static chunk layout (docs/design.md §1.2 and §2).

Every chunk has the same slots, in this order:

    [G global placeholders][budget temp placeholders][C text + nb temp beacons][G global beacons]

with nb = ceil(C / stride); the text region interleaves a beacon after every `stride`
text slots. Unused slots are masked. Position ids count only valid slots, so the static
layout computes exactly what the variable layout of §1.2 computes: a masked slot is
invisible, whatever sits in it. The temp queue is right-aligned: its valid entries are
the last m_i of the budget slots, oldest first.

Arrays are chunk-major ([N, B, ...]) because every schedule scans over chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from comet_jax.config import CometConfig
from comet_jax.loss import IGNORE


@dataclass(frozen=True)
class Slots:
    """Static slot indices of one chunk for a CometConfig."""

    global_size: int
    budget: int  # temp placeholder slots (0 without temp memory)
    chunk_size: int
    stride: int  # -1: no temp beacons

    @classmethod
    def of(cls, comet: CometConfig) -> "Slots":
        return cls(comet.global_size, comet.budget if comet.has_temp else 0, comet.chunk_size, comet.stride)

    @property
    def num_beacons(self) -> int:
        return -(-self.chunk_size // self.stride) if self.stride > 0 else 0

    @property
    def temp_start(self) -> int:
        return self.global_size

    @property
    def text_start(self) -> int:
        return self.global_size + self.budget

    @property
    def beacons_start(self) -> int:  # global beacons
        return self.text_start + self.chunk_size + self.num_beacons

    @property
    def size(self) -> int:
        return self.beacons_start + self.global_size

    @property
    def text_slots(self) -> np.ndarray:
        """Slot of text token k of the chunk: a beacon follows every `stride` text tokens."""
        k = np.arange(self.chunk_size)
        return self.text_start + (k + k // self.stride if self.stride > 0 else k)

    @property
    def beacon_slots(self) -> np.ndarray:
        """Slot of temp beacon b: after its group of `stride` text slots (the last group may
        be shorter when stride does not divide C)."""
        b = np.arange(self.num_beacons)
        return self.text_start + b * (self.stride + 1) + np.minimum(self.stride, self.chunk_size - b * self.stride)


@dataclass
class ChunkBatch:
    """A batch laid out in chunks. Shapes: N chunks, B sequences, S slots, C text slots."""

    tokens: np.ndarray  # [N, B, S] int32
    valid: np.ndarray  # [N, B, S] bool
    positions: np.ndarray  # [N, B, S] int32
    labels: np.ndarray  # [N, B, C] int32, IGNORE where unlabeled
    raw_index: np.ndarray  # [N, B, C] int32: index of the text token in its raw sequence, -1 if none
    first: np.ndarray  # [N, B] bool: chunk 0 of its sequence
    live: np.ndarray  # [N, B] bool: the chunk holds text (padding chunks change nothing)

    def as_dict(self) -> dict[str, np.ndarray]:
        return dict(tokens=self.tokens, valid=self.valid, positions=self.positions, labels=self.labels,
                    first=self.first, live=self.live)


def build(seqs: Sequence[np.ndarray], plans: Sequence[Sequence[int]], comet: CometConfig,
          num_chunks: int | None = None, loss_masks: Sequence[np.ndarray] | None = None,
          open_last: bool = False) -> ChunkBatch:
    """Lay out raw token sequences by their chunk plans (labels taken before chunking).

    loss_masks: optional bool array per sequence (same length); token k+1 is a label
    (label[k] = seq[k+1]) only where loss_masks[k+1] is True, else label[k] = IGNORE.
    open_last: lay the last chunk of every plan out as generation's open chunk (docs/design.md
    §1.5): no global beacons, no temp beacon after a final partial group.
    """
    if loss_masks is not None and len(loss_masks) != len(seqs):
        raise ValueError(f"{len(loss_masks)} loss masks for {len(seqs)} sequences")
    slots = Slots.of(comet)
    n_chunks = max(len(p) for p in plans)
    if num_chunks is not None:
        if num_chunks < n_chunks:
            raise ValueError(f"num_chunks={num_chunks} but a plan has {n_chunks} chunks")
        n_chunks = num_chunks
    b, s, c = len(seqs), slots.size, slots.chunk_size
    out = ChunkBatch(
        tokens=np.zeros((n_chunks, b, s), np.int32), valid=np.zeros((n_chunks, b, s), bool),
        positions=np.zeros((n_chunks, b, s), np.int32), labels=np.full((n_chunks, b, c), IGNORE, np.int32),
        raw_index=np.full((n_chunks, b, c), -1, np.int32), first=np.zeros((n_chunks, b), bool),
        live=np.zeros((n_chunks, b), bool))
    text_slots, beacon_slots = slots.text_slots, slots.beacon_slots
    g, t0 = slots.global_size, slots.temp_start
    for j, (seq, plan) in enumerate(zip(seqs, plans)):
        seq = np.asarray(seq)
        if sum(plan) != len(seq) or any(not 1 <= x <= c for x in plan):
            raise ValueError(f"sequence {j}: plan {list(plan)} does not split {len(seq)} tokens into chunks "
                             f"of 1..{c}")
        labels = np.append(seq[1:], IGNORE)
        if loss_masks is not None:
            mask = np.asarray(loss_masks[j], bool)
            if mask.shape != seq.shape:
                raise ValueError(f"sequence {j}: loss mask shape {mask.shape} != sequence shape {seq.shape}")
            labels = np.where(np.append(mask[1:], False), labels, IGNORE)
        start = produced = 0
        for i, length in enumerate(plan):
            tok, val = out.tokens[i, j], out.valid[i, j]
            if g and i > 0:
                tok[:g], val[:g] = comet.placeholder_id, True
            m = min(slots.budget, produced)
            if m:
                tok[t0 + slots.budget - m: t0 + slots.budget] = comet.placeholder_id
                val[t0 + slots.budget - m: t0 + slots.budget] = True
            ts = text_slots[:length]
            tok[ts], val[ts] = seq[start:start + length], True
            out.labels[i, j, :length] = labels[start:start + length]
            out.raw_index[i, j, :length] = np.arange(start, start + length)
            is_open = open_last and i == len(plan) - 1
            if slots.stride > 0:
                nb = length // slots.stride if is_open else -(-length // slots.stride)
                tok[beacon_slots[:nb]], val[beacon_slots[:nb]] = comet.temp_beacon_id, True
                produced += nb
            if g and not is_open:
                tok[slots.beacons_start:], val[slots.beacons_start:] = comet.global_beacon_ids, True
            out.positions[i, j] = np.where(val, np.cumsum(val) - 1, 0)
            out.first[i, j], out.live[i, j] = i == 0, True
            start += length
    return out
