"""Cross-entropy without materialising [tokens, vocab] logits.

Tokens are processed in blocks; each block's logits are recomputed in the backward
pass (`jax.checkpoint`), so memory holds one block of logits at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

IGNORE = -100  # label of a position that is not scored


def next_token_labels(tokens: jnp.ndarray, lengths: jnp.ndarray) -> jnp.ndarray:
    """label[k] = token[k+1]; the last real token and padding get IGNORE."""
    t = tokens.shape[1]
    shifted = jnp.concatenate([tokens[:, 1:], jnp.zeros_like(tokens[:, :1])], axis=1)
    keep = jnp.arange(t)[None, :] < (lengths[:, None] - 1)
    return jnp.where(keep, shifted, IGNORE)


# A block of logits holds at most this many float32 values (128 MiB): with a 128k-150k
# vocabulary 1024 tokens' logits were 0.5-0.6 GB, three of them live in the backward pass,
# which is what a 16 GB chip could not spare (docs/benchmarks.md, the v5e-16 plans).
BLOCK_LOGITS = 1 << 25


def block_tokens(vocab: int, most: int = 1024, least: int = 128) -> int:
    """Tokens per block for a vocabulary: a power of two in [least, most], logits <= BLOCK_LOGITS."""
    fit = max(1, BLOCK_LOGITS // max(vocab, 1))
    return max(least, min(most, 1 << (fit.bit_length() - 1)))


def token_nll(h: jnp.ndarray, head: jnp.ndarray, labels: jnp.ndarray, real_vocab: int | None = None,
              block_size: int | None = None) -> jnp.ndarray:
    """Per-token negative log-likelihood (float32, or float64 for float64 inputs), 0 where
    label == IGNORE.

    h: [..., D] final-normed hidden states; head: (D, V); labels: [...] int.
    Vocabulary rows >= real_vocab are excluded from the softmax. `block_size` tokens are
    scored at a time (default: `block_tokens(V)`); it changes memory, not values.
    """
    lead = labels.shape
    d = h.shape[-1]
    h = h.reshape(-1, d)
    labels = labels.reshape(-1)
    n = labels.shape[0]
    block = max(1, min(block_size or block_tokens(head.shape[-1]), n))
    n_blocks = -(-n // block)
    pad = n_blocks * block - n
    h = jnp.pad(h, ((0, pad), (0, 0)))
    labels = jnp.pad(labels, (0, pad), constant_values=IGNORE)
    vocab = head.shape[-1]
    live = None if real_vocab is None or real_vocab >= vocab else jnp.arange(vocab) < real_vocab

    @jax.checkpoint
    def one_block(args):
        hb, lb = args
        logits = jnp.einsum("nd,dv->nv", hb, head.astype(hb.dtype),
                            preferred_element_type=jnp.promote_types(hb.dtype, jnp.float32))
        if live is not None:
            logits = jnp.where(live, logits, -jnp.inf)
        lse = jax.nn.logsumexp(logits, axis=-1)
        safe = jnp.where(lb == IGNORE, 0, lb)
        target = jnp.take_along_axis(logits, safe[:, None], axis=-1)[:, 0]
        return jnp.where(lb == IGNORE, 0.0, lse - target)

    nll = jax.lax.map(one_block, (h.reshape(n_blocks, block, d), labels.reshape(n_blocks, block)))
    return nll.reshape(-1)[:n].reshape(lead)


def mean_loss(nll: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
    """Sum of token losses / number of labeled tokens (docs/design.md §1.3)."""
    count = jnp.sum(labels != IGNORE)
    return jnp.sum(nll) / jnp.maximum(count, 1)
