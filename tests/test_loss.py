"""Blockwise cross-entropy equals the naive full-logits loss, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax.loss import IGNORE, mean_loss, next_token_labels, token_nll


def naive(h, head, labels, real_vocab):
    logits = h @ head
    logits = jnp.where(jnp.arange(head.shape[1]) < real_vocab, logits, -jnp.inf)
    logp = jax.nn.log_softmax(logits, -1)
    safe = jnp.where(labels == IGNORE, 0, labels)
    nll = -jnp.take_along_axis(logp, safe[..., None], -1)[..., 0]
    return jnp.where(labels == IGNORE, 0.0, nll)


@pytest.mark.parametrize("block", [1, 7, 64, 1000, None])
def test_blockwise_equals_naive(block):
    rng = np.random.default_rng(0)
    h = jnp.asarray(rng.normal(size=(3, 21, 16)), jnp.float32)
    head = jnp.asarray(rng.normal(size=(16, 50)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 45, (3, 21)))
    labels = labels.at[:, -3:].set(IGNORE)
    ours = token_nll(h, head, labels, real_vocab=45, block_size=block)
    np.testing.assert_allclose(ours, naive(h, head, labels, 45), rtol=1e-5, atol=1e-6)
    assert np.all(np.asarray(ours)[:, -3:] == 0)
    f = lambda fn: jax.grad(lambda h, w: mean_loss(fn(h, w), labels), argnums=(0, 1))
    g1 = f(lambda h, w: token_nll(h, w, labels, 45, block))(h, head)
    g2 = f(lambda h, w: naive(h, w, labels, 45))(h, head)
    for a, b in zip(g1, g2):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_next_token_labels():
    tokens = jnp.array([[5, 6, 7, 8], [1, 2, 0, 0]])
    labels = next_token_labels(tokens, jnp.array([4, 2]))
    assert labels.tolist() == [[6, 7, 8, IGNORE], [2, IGNORE, IGNORE, IGNORE]]


def test_no_full_logits_in_the_compiled_loss():
    """The compiled blockwise loss never holds a [tokens, vocab] array."""
    n, d, v, block = 4096, 8, 512, 256
    h = jax.ShapeDtypeStruct((n, d), jnp.float32)
    w = jax.ShapeDtypeStruct((d, v), jnp.float32)
    labels = jax.ShapeDtypeStruct((n,), jnp.int32)
    grad = jax.jit(jax.grad(lambda h, w, l: mean_loss(token_nll(h, w, l, None, block), l), argnums=(0, 1)))
    mem = grad.lower(h, w, labels).compile().memory_analysis()
    if mem is None:
        pytest.skip("memory analysis unavailable on this backend")
    assert mem.temp_size_in_bytes < n * v * 4 / 4, mem.temp_size_in_bytes


def test_block_size_follows_the_vocabulary():
    from comet_jax.loss import BLOCK_LOGITS, block_tokens

    assert block_tokens(64) == 1024 and block_tokens(129024) == 256 and block_tokens(151936) == 128
    for v in (32000, 129024, 151936, 262144):
        b = block_tokens(v)
        assert b & (b - 1) == 0 and (b * v <= BLOCK_LOGITS or b == 128)
