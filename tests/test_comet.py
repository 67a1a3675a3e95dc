"""CoMeT schedules: agreement, reduction to the plain backbone, information flow."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax import chunking, layout
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.model import comet as cm
from comet_jax.model.init import init_params
from comet_jax.infer.scoring import full_token_nll
from numerics import assert_tree_close

MODEL = ModelConfig(vocab_size=64, num_real_tokens=60, hidden_size=32, intermediate_size=48, num_layers=3,
                    num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True)
COMET = CometConfig(chunk_size=7, global_size=3, stride=3, budget=4, placeholder_id=50, temp_beacon_id=51,
                    global_beacon_ids=(52, 53, 54))


def random_params(comet, seed=0):
    """Init, then perturb everything so that norms and memory nets are far from identity."""
    p = init_params(MODEL, comet, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    leaves = [x + 0.2 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, leaves)


def batch(seqs, plans, comet, n=None):
    return layout.build(seqs, plans, comet, num_chunks=n)


@pytest.mark.parametrize("comet, runs", [
    (COMET, [("layer_major", False), ("layer_major", True), ("chunk_major", True), ("chunk_major", False),
             ("layer_major", "dots"), ("layer_major", "offload"), ("chunk_major", "offload")]),
    (CometConfig(chunk_size=7, global_size=2, placeholder_id=50, global_beacon_ids=(52, 53)),
     [("layer_major", True), ("chunk_major", True)]),
    (CometConfig(chunk_size=7, stride=2, budget=9, placeholder_id=50, temp_beacon_id=51),
     [("layer_major", True), ("chunk_major", True)]),
], ids=["global+temp", "global_only", "temp_only"])
def test_schedules_agree_values_and_grads(mixed_plans, comet, runs):
    seqs, plans = mixed_plans
    params = random_params(comet)
    b = batch(seqs, plans, comet, n=6).as_dict()  # includes fully masked padding chunks
    results = [jax.value_and_grad(cm.loss)(params, b, MODEL, comet, schedule, remat) for schedule, remat in runs]
    v0, g0 = results[0]
    assert np.isfinite(float(v0))
    for v, g in results[1:]:
        np.testing.assert_allclose(v, v0, rtol=1e-6)
        assert_tree_close(g, g0, rtol=1e-5)


def test_padding_chunks_change_nothing(mixed_plans):
    seqs, plans = mixed_plans
    params = random_params(COMET)
    nll_a = cm.token_losses(params, batch(seqs, plans, COMET).as_dict(), MODEL, COMET)
    nll_b = cm.token_losses(params, batch(seqs, plans, COMET, n=7).as_dict(), MODEL, COMET)
    np.testing.assert_allclose(np.asarray(nll_b)[: nll_a.shape[0]], nll_a, rtol=1e-6)
    assert np.all(np.asarray(nll_b)[nll_a.shape[0]:] == 0)


def test_without_memory_one_chunk_equals_full_mode(mixed_plans):
    seqs, _ = mixed_plans
    comet = CometConfig(chunk_size=32)
    params = random_params(comet)
    nll = np.asarray(cm.token_losses(params, batch(seqs, [[len(s)] for s in seqs], comet).as_dict(), MODEL, comet))
    tokens = np.zeros((3, 26), np.int32)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = s
    ref, _ = full_token_nll(params, jnp.asarray(tokens), jnp.asarray([len(s) for s in seqs]), MODEL)
    for i, s in enumerate(seqs):
        np.testing.assert_allclose(nll[0, i, : len(s)], np.asarray(ref)[i, : len(s)], rtol=1e-5, atol=1e-6)


def test_memory_carries_information_forward_only():
    rng = np.random.default_rng(3)
    params = random_params(COMET, seed=5)
    seq = rng.integers(0, 50, 28)
    plan = chunking.fixed(28, 7)

    def per_chunk(s):
        return np.asarray(cm.token_losses(params, batch([s], [plan], COMET).as_dict(), MODEL, COMET))[:, 0]

    base = per_chunk(seq)
    early = seq.copy()
    early[2] = (early[2] + 1) % 50
    late = seq.copy()
    late[-2] = (late[-2] + 1) % 50
    # chunk 0's token reaches the last chunk only through the memories
    assert np.abs(per_chunk(early)[-1] - base[-1]).max() > 1e-4
    # nothing flows backwards: every loss of chunk 0 is unchanged
    np.testing.assert_array_equal(per_chunk(late)[0], base[0])
    # and without memory, chunks are independent
    no_mem = CometConfig(chunk_size=7)
    p0 = random_params(no_mem, seed=5)
    f = lambda s: np.asarray(cm.token_losses(p0, batch([s], [plan], no_mem).as_dict(), MODEL, no_mem))[:, 0]
    np.testing.assert_array_equal(f(early)[-1], f(seq)[-1])
