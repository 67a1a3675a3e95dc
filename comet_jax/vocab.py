"""The CoMeT vocabulary rules (docs/design.md §1.4), shared by the converter, training from
scratch and the benchmarks: which ids the CoMeT tokens get, how many rows they add, and how
far the embedding is padded."""

from __future__ import annotations

from comet_jax.config import CometConfig

VOCAB_MULTIPLE = 256


def comet_for_vocab(vocab: int, chunk_size: int, global_size: int, stride: int, budget: int) -> CometConfig:
    """New token ids follow the existing rows: placeholder, temp beacon, global beacons."""
    next_id = vocab
    placeholder = temp = -1
    if global_size > 0 or stride > 0:
        placeholder, next_id = next_id, next_id + 1
    if stride > 0:
        temp, next_id = next_id, next_id + 1
    globals_ = tuple(range(next_id, next_id + global_size))
    return CometConfig(chunk_size=chunk_size, global_size=global_size, stride=stride,
                       budget=budget if stride > 0 else 0, placeholder_id=placeholder,
                       temp_beacon_id=temp, global_beacon_ids=globals_)


def added_tokens(comet: CometConfig) -> int:
    """Rows the CoMeT tokens take: placeholder (with any memory), temp beacon, G global beacons."""
    return len(comet.global_beacon_ids) + int(comet.has_memory) + int(comet.has_temp)


def padded_vocab(real_vocab: int) -> int:
    """Embedding rows: the real tokens rounded up to a multiple of 256 (padding rows are masked)."""
    return -(-real_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE
