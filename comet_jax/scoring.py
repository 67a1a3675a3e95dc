"""Per-token losses of whole sequences, in `full` (plain backbone) or `comet` mode."""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.loss import IGNORE, next_token_labels, token_nll
from comet_jax.model import backbone

MODES = ("full", "comet")


@partial(jax.jit, static_argnames=("cfg",))
def full_token_nll(params, tokens: jnp.ndarray, lengths: jnp.ndarray, cfg: ModelConfig):
    """(nll [B, T] float32, labels [B, T]) of the plain backbone over right-padded tokens."""
    labels = next_token_labels(tokens, lengths)
    h = backbone.full_hidden(params, tokens, lengths, cfg)
    head = backbone.lm_head_weight(backbone.cast_params(params, cfg.dtype))
    return token_nll(h, head, labels, cfg.real_vocab), labels


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


def score_batch(params, seqs: list[np.ndarray], batch_size: int, model: ModelConfig,
                comet: CometConfig | None = None, mode: str = "full") -> list[tuple[float, int]]:
    """(sum of token losses, number of labeled tokens) for each sequence."""
    tokens, lengths = pad_batch(seqs, batch_size)
    if mode == "full":
        nll, labels = full_token_nll(params, jnp.asarray(tokens), jnp.asarray(lengths), model)
    else:
        raise NotImplementedError(f"mode {mode!r} is not available yet")
    nll = np.asarray(nll, np.float64)
    labeled = np.asarray(labels) != IGNORE
    return [(float(nll[i][labeled[i]].sum()), int(labeled[i].sum())) for i in range(len(seqs))]
