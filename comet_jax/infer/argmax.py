"""Teacher-forced greedy predictions (argmax of the logits at every text position) of whole
sequences, without materialising [tokens, vocab] logits.

comet mode mirrors the chunk-major scoring of comet_jax.infer.scoring (the same closed
training layout of every chunk, from comet_jax.model.decode.chunk_layout), but runs a fixed
block of chunks per compiled call and carries only the per-layer memories between calls, as
decode.prefill_closed does: device memory is constant in the sequence length, and the host
holds the tokens and one block of predictions. full mode is the plain backbone over the whole
sequence (the baseline: memory grows with the length).

Within a chunk (or a sequence) the logits are taken in blocks of `vocab_block` tokens, so one
[block, V] slab is live at a time, as in comet_jax.loss.token_nll.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax import chunking
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.layout import Slots
from comet_jax.model import backbone
from comet_jax.model.comet import stacked_memory
from comet_jax.model.decode import _q_valid, chunk_forward, chunk_layout

VOCAB_BLOCK = 256


def token_argmax(params: dict, h: jnp.ndarray, model: ModelConfig, block: int = VOCAB_BLOCK) -> jnp.ndarray:
    """Argmax ids [...] (int32) of the logits of final-normed hidden states h [..., D]; padded
    vocabulary rows never win (backbone.head_logits masks them)."""
    lead, d = h.shape[:-1], h.shape[-1]
    flat = h.reshape(-1, d)
    n = flat.shape[0]
    blk = max(1, min(block, n))
    n_blocks = -(-n // blk)
    flat = jnp.pad(flat, ((0, n_blocks * blk - n), (0, 0)))
    ids = jax.lax.map(lambda x: jnp.argmax(backbone.head_logits(params, x, model), axis=-1).astype(jnp.int32),
                      flat.reshape(n_blocks, blk, d))
    return ids.reshape(-1)[:n].reshape(lead)


@partial(jax.jit, static_argnames=("model", "comet"), donate_argnames=("mems",))
def comet_block(params: dict, mems: dict, text: jnp.ndarray, n_text: jnp.ndarray, start: jnp.ndarray,
                n_chunks: jnp.ndarray, model: ModelConfig, comet: CometConfig):
    """Chunks start, start+1, ... (text [K, B, C], n_text [K, B] text tokens in each) as closed
    training chunks: (memories after them, argmax ids [K, B, C] at their text slots). Chunk
    start+j of row b is live when start+j < n_chunks[b] (dead chunks leave the memories as they are)."""
    b = text.shape[1]
    text_slots = Slots.of(comet).text_slots

    def step(mems, xs):
        j, txt, n = xs
        i = start + j
        live = i < n_chunks
        first = jnp.broadcast_to(i == 0, (b,))
        lay = chunk_layout(txt, n, first, _q_valid(mems, b, comet), True, live, comet)
        h, mems, _ = chunk_forward(params, mems, lay, first, live, model, comet)
        h = backbone.final_norm(params, h[:, text_slots], model)
        return mems, token_argmax(params, h, model)

    return jax.lax.scan(step, mems, (jnp.arange(text.shape[0]), text, n_text))


def comet_predictions(params: dict, seqs: list[np.ndarray], batch_size: int, model: ModelConfig,
                      comet: CometConfig, block_chunks: int = 8,
                      on_block: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
    """Teacher-forced argmax of every position of `seqs` (at most batch_size; chunked with the
    fixed-size planner, as comet_jax.infer.scoring.score_batch): calls on_block(index [B, K*C],
    pred [B, K*C]) for each block of chunks, index being the raw position each prediction
    follows (-1: no token there), so the caller keeps counts, not predictions."""
    params = backbone.cast_params(params, model.dtype)  # once, not per compiled call
    c = comet.chunk_size
    plans = [chunking.fixed(len(s), c) for s in seqs]
    n_chunks = np.zeros(batch_size, np.int32)
    n_chunks[: len(seqs)] = [len(p) for p in plans]
    mems = stacked_memory(batch_size, model, comet)
    total = int(n_chunks.max())
    for start in range(0, total, block_chunks):
        k = block_chunks if start + block_chunks <= total else 1  # two compiled shapes, as prefill
        for s0 in range(start, min(start + block_chunks, total), k):
            text = np.zeros((k, batch_size, c), np.int32)
            n_text = np.zeros((k, batch_size), np.int32)
            index = np.full((batch_size, k, c), -1, np.int64)
            for r, seq in enumerate(seqs):
                for j in range(k):
                    lo = (s0 + j) * c
                    part = seq[lo: lo + c]
                    text[j, r, : len(part)] = part
                    n_text[j, r] = len(part)
                    index[r, j, : len(part)] = np.arange(lo, lo + len(part))
            mems, pred = comet_block(params, mems, jnp.asarray(text), jnp.asarray(n_text), jnp.int32(s0),
                                     jnp.asarray(n_chunks), model, comet)
            if on_block is not None:
                on_block(index.reshape(batch_size, -1),
                         np.asarray(pred).transpose(1, 0, 2).reshape(batch_size, -1))


@partial(jax.jit, static_argnames=("model",))
def full_argmax(params: dict, tokens: jnp.ndarray, lengths: jnp.ndarray, model: ModelConfig) -> jnp.ndarray:
    """Argmax ids [B, T] of the plain backbone over right-padded tokens [B, T]."""
    p = backbone.cast_params(params, model.dtype)
    return token_argmax(p, backbone.full_hidden(p, tokens, lengths, model), model)


def full_predictions(params: dict, seqs: list[np.ndarray], batch_size: int, model: ModelConfig) -> np.ndarray:
    """Argmax ids [batch_size, T] of the plain backbone (rows past len(seqs) are padding)."""
    t = max(len(s) for s in seqs)
    tokens = np.zeros((batch_size, t), np.int32)
    lengths = np.zeros(batch_size, np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)], lengths[i] = s, len(s)
    return np.asarray(full_argmax(params, jnp.asarray(tokens), jnp.asarray(lengths), model))
