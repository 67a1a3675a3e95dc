"""The converted backbone reproduces transformers' logits (float32, eager attention)."""

import jax.numpy as jnp
import numpy as np
import pytest

import hf_models
from comet_jax import checkpoint
from comet_jax.convert.hf_import import convert
from comet_jax.model import backbone

ARCHS = {"llama": hf_models.llama_config, "qwen3": hf_models.qwen3_config}


@pytest.fixture(scope="module", params=sorted(ARCHS))
def converted(request, tmp_path_factory):
    arch = request.param
    hf = hf_models.build(ARCHS[arch]())
    src = hf_models.save(hf, tmp_path_factory.mktemp(f"{arch}_src"))
    dst = tmp_path_factory.mktemp(f"{arch}_dst") / "ckpt"
    convert(src, dst, global_size=0, stride=-1, chunk_size=16, log=lambda m: None)
    params, model, comet, _ = checkpoint.load(dst)
    return arch, hf, params, model


def test_logits_match_transformers(converted):
    arch, hf, params, model = converted
    v = hf.config.vocab_size
    tokens = np.random.default_rng(0).integers(0, v, (2, 37))
    ref = hf_models.hf_logits(hf, tokens)
    ours = np.asarray(backbone.full_logits(params, jnp.asarray(tokens), jnp.asarray([37, 37]), model))
    err = np.abs(ours[..., :v] - ref).max()
    print(f"{arch}: max |logits - transformers| = {err:.3g}")
    assert err <= 1e-4
    # Rows added only to pad the vocabulary never win a softmax.
    assert ours.shape[-1] % 256 == 0 and np.all(np.isneginf(ours[..., v:]))


def test_right_padded_batch_equals_single_sequences(converted):
    arch, hf, params, model = converted
    v = hf.config.vocab_size
    rng = np.random.default_rng(1)
    lengths = [23, 9, 31]
    tokens = np.zeros((3, 32), np.int64)
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(0, v, n)
    ours = np.asarray(backbone.full_logits(params, jnp.asarray(tokens), jnp.asarray(lengths), model))
    for i, n in enumerate(lengths):
        ref = hf_models.hf_logits(hf, tokens[i:i + 1, :n])[0]
        assert np.abs(ours[i, :n, :v] - ref).max() <= 1e-4


def test_explicit_positions_and_mask(converted):
    """Attention honours the given position ids and mask: a sequence laid out at offset 5
    behind 5 masked junk slots, with positions restarting at 0, equals the plain sequence."""
    arch, hf, params, model = converted
    v = hf.config.vocab_size
    rng = np.random.default_rng(2)
    toks = rng.integers(0, v, 12)
    p = backbone.cast_params(params, "float32")
    slots = np.concatenate([rng.integers(0, v, 5), toks])[None]
    positions = np.concatenate([np.zeros(5, np.int32), np.arange(12, dtype=np.int32)])[None]
    real = np.arange(17) >= 5
    mask = (np.arange(17)[:, None] >= np.arange(17)[None, :]) & real[None, :]
    h = backbone.embed(p, jnp.asarray(slots), model)
    h = backbone.run_layers(p["layers"], h, jnp.asarray(positions), jnp.asarray(mask[None]), model)
    logits = backbone.final_norm(p, h, model) @ backbone.lm_head_weight(p)
    ref = hf_models.hf_logits(hf, toks[None])[0]
    assert np.abs(np.asarray(logits)[0, 5:, :v] - ref).max() <= 1e-4


def test_causal_blocks_equal_one_masked_softmax(converted):
    """full_hidden's blockwise causal attention (queries in blocks, keys only up to the
    block's end; ragged last block) == attention over the whole causal mask."""
    import jax

    arch, hf, params, model = converted
    rng = np.random.default_rng(1)
    q = jnp.asarray(rng.normal(size=(2, 37, 4, 8)), jnp.float32)
    k, v = (jnp.asarray(rng.normal(size=(2, 37, 2, 8)), jnp.float32) for _ in range(2))
    lengths = jnp.asarray([37, 20])
    ref = backbone.attend(q, k, v, backbone.causal_mask(lengths, 37))
    got = backbone.causal_attend(q, k, v, lengths, block=8)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-5, atol=1e-6)
    tokens = jnp.asarray(rng.integers(0, hf.config.vocab_size, (2, 37)))
    whole = backbone.full_hidden(params, tokens, lengths, model, block=37)
    blocks = jax.jit(lambda p, t: backbone.full_hidden(p, t, lengths, model, block=8))(params, tokens)
    np.testing.assert_allclose(np.asarray(blocks), np.asarray(whole), rtol=1e-5, atol=1e-5)
