"""Per-token losses of whole sequences, in `full` (plain backbone) or `comet` mode."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax import chunking, layout
from comet_jax.config import MODES, CometConfig, ModelConfig
from comet_jax.loss import IGNORE, next_token_labels
from comet_jax.model import backbone, comet as comet_model



@partial(jax.jit, static_argnames=("cfg",))
def full_token_nll(params, tokens: jnp.ndarray, lengths: jnp.ndarray, cfg: ModelConfig):
    """(nll [B, T] float32, labels [B, T]) of the plain backbone over right-padded tokens."""
    labels = next_token_labels(tokens, lengths)
    return backbone.full_token_losses(params, tokens, lengths, labels, cfg), labels


@partial(jax.jit, static_argnames=("model", "comet"))
def comet_token_nll(params, batch, model: ModelConfig, comet: CometConfig):
    """Per-token loss [N, B, C] of the chunk-major schedule (constant memory in N)."""
    return comet_model.token_losses(params, batch, model, comet, schedule="chunk_major", remat=False)


def bucket_chunks(n: int) -> int:
    """Chunk counts padded to a power of two (padding chunks are fully masked)."""
    return 1 << (n - 1).bit_length()


def bucket_length(n: int) -> int:
    """Pad lengths to few distinct shapes, so a file of varied lengths compiles a few times."""
    if n <= 1024:
        return max(16, 1 << (n - 1).bit_length())
    return -(-n // 1024) * 1024


def pad_batch(seqs: list[np.ndarray], batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad sequences into [batch_size, bucket] tokens and their lengths (rows beyond
    len(seqs) are empty and score nothing)."""
    t = bucket_length(max(len(s) for s in seqs))
    tokens = np.zeros((batch_size, t), np.int32)
    lengths = np.zeros((batch_size,), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
        lengths[i] = len(s)
    return tokens, lengths


def token_losses_batch(params, seqs: list[np.ndarray], batch_size: int, model: ModelConfig,
                       comet: CometConfig | None = None, mode: str = "full") -> list[tuple[np.ndarray, np.ndarray]]:
    """For each sequence, (losses, positions): the loss of every labeled token and the
    position (index in the sequence, from 1) of the token it predicts."""
    if mode == "full":
        tokens, lengths = pad_batch(seqs, batch_size)
        nll, labels = full_token_nll(params, jnp.asarray(tokens), jnp.asarray(lengths), model)
        nll, labels = np.asarray(nll, np.float64), np.asarray(labels)
    elif mode == "comet":
        # evaluation splits with the fixed-size planner (docs/design.md §1.2)
        plans = [chunking.fixed(len(s), comet.chunk_size) for s in seqs]
        rows = list(seqs) + [np.zeros(1, np.int32)] * (batch_size - len(seqs))
        plans += [[1]] * (batch_size - len(seqs))
        n_chunks = bucket_chunks(max(len(p) for p in plans))
        lay = layout.build(rows, plans, comet, num_chunks=n_chunks)
        nll = np.asarray(comet_token_nll(params, lay.as_dict(), model, comet), np.float64)
        # [N, B, C] -> [B, N*C]
        nll = nll.transpose(1, 0, 2).reshape(batch_size, -1)
        labels = lay.labels.transpose(1, 0, 2).reshape(batch_size, -1)
    else:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    labeled = labels != IGNORE
    # row index k (the input token; chunks of the fixed planner are in order) predicts token k+1
    return [(nll[i][labeled[i]], np.flatnonzero(labeled[i]) + 1) for i in range(len(seqs))]


def position_buckets(results: list[tuple[np.ndarray, np.ndarray]], edges: list[int]) -> list[dict]:
    """Mean loss per bucket of predicted-token positions: [0, e1), [e1, e2), ..., [e_last, inf)
    for edges e1 < e2 < ...; empty buckets have loss None."""
    bounds = [0, *edges, None]
    losses = np.concatenate([x for x, _ in results]) if results else np.zeros(0)
    positions = np.concatenate([p for _, p in results]) if results else np.zeros(0, int)
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        inside = (positions >= lo) & (positions < hi if hi is not None else True)
        n = int(inside.sum())
        out.append({"from": lo, "to": hi, "n_tokens": n, "loss": float(losses[inside].mean()) if n else None})
    return out
