"""Optimizer: schedule, decay mask, memory learning-rate multiplier; step accumulation."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from comet_jax import chunking, layout
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.model.init import init_params
from comet_jax.train.optim import decay_mask, ema_params, lr_schedule, make_optimizer, param_groups
from comet_jax.train.train_step import make_train_step

MODEL = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_layers=2, num_heads=2, num_kv_heads=1,
                    head_dim=8)
COMET = CometConfig(chunk_size=6, global_size=2, stride=3, budget=4, placeholder_id=60, temp_beacon_id=61,
                    global_beacon_ids=(62, 63))


def test_schedule_warmup_then_cosine_to_floor():
    s = lr_schedule(1.0, 10, 110, min_lr_ratio=0.1)
    assert float(s(0)) == 0.0 and float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    assert float(s(60)) == pytest.approx(0.55, abs=1e-3) and float(s(110)) == pytest.approx(0.1)


def test_schedule_warmup_stable_decay():
    s = lr_schedule(1.0, 10, 110, min_lr_ratio=0.1, decay_steps=40)  # held at 1 until step 70
    assert float(s(5)) == pytest.approx(0.5) and float(s(10)) == pytest.approx(1.0)
    assert float(s(40)) == pytest.approx(1.0) and float(s(70)) == pytest.approx(1.0)
    assert float(s(90)) == pytest.approx(0.55, abs=1e-3) and float(s(110)) == pytest.approx(0.1)
    # a decay longer than the run after warm-up: the cosine starts when the warm-up ends
    s = lr_schedule(1.0, 10, 110, min_lr_ratio=0.1, decay_steps=500)
    assert float(s(10)) == pytest.approx(1.0) and float(s(60)) == pytest.approx(0.55, abs=1e-3)


def test_groups_and_decay_mask():
    p = init_params(MODEL, COMET, jax.random.key(0))
    groups, mask = param_groups(p), decay_mask(p)
    assert groups["layers"]["global_mem"]["gate"] == "memory" and groups["layers"]["temp_mem"]["up"] == "memory"
    assert groups["layers"]["wq"] == "base" and groups["embed"] == "base"
    assert mask["layers"]["wq"] and mask["embed"] and mask["layers"]["temp_mem"]["down"]
    assert not mask["layers"]["attn_norm"] and not mask["final_norm"] and not mask["layers"]["global_mem"]["gate"]
    assert not mask["layers"]["global_mem"]["norm"]


def test_memory_lr_multiplier_is_applied():
    p = init_params(MODEL, COMET, jax.random.key(0))
    grads = jax.tree.map(jnp.ones_like, p)
    updates = {}
    for mult in (1.0, 5.0):
        tx, _ = make_optimizer(p, lr=1e-3, total_steps=100, warmup_steps=0, clip_norm=0, memory_lr_mult=mult)
        u, _ = tx.update(grads, tx.init(p), p)
        updates[mult] = u
    # Adam's first step moves every weight by lr (sign of the gradient): x5 on memory nets only
    np.testing.assert_allclose(updates[5.0]["layers"]["global_mem"]["up"], 5 * updates[1.0]["layers"]["global_mem"]["up"],
                               rtol=1e-5)
    np.testing.assert_allclose(updates[5.0]["layers"]["wq"], updates[1.0]["layers"]["wq"], rtol=1e-6)
    assert float(jnp.abs(updates[1.0]["layers"]["wq"]).max()) == pytest.approx(1e-3, rel=1e-3)


def test_ema_averages_the_parameters_each_step_leaves():
    p = init_params(MODEL, COMET, jax.random.key(0))
    tx, _ = make_optimizer(p, lr=1e-2, total_steps=10, warmup_steps=0, ema=0.75)
    plain, _ = make_optimizer(p, lr=1e-2, total_steps=10, warmup_steps=0)
    state, plain_state, ema = tx.init(p), plain.init(p), p
    for i in range(3):
        grads = jax.tree.map(lambda x: jnp.full_like(x, (-1.0) ** i * (i + 1)), p)
        u, state = tx.update(grads, state, p)
        u_plain, plain_state = plain.update(grads, plain_state, p)
        jax.tree.map(np.testing.assert_array_equal, u, u_plain)  # the average does not change the steps
        p = optax.apply_updates(p, u)
        ema = jax.tree.map(lambda e, x: 0.75 * e + 0.25 * x, ema, p)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7), ema_params(state), ema)
    assert not np.allclose(ema["layers"]["wq"], p["layers"]["wq"])
    with pytest.raises(ValueError, match="holds 0 parameter averages"):
        ema_params(plain_state)


@pytest.mark.parametrize("mode", ["comet", "full"])
def test_gradient_accumulation_equals_one_big_batch(mode):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 60, n) for n in (17, 9, 14, 5)]
    if mode == "comet":
        batch = layout.build(seqs, [chunking.fixed(len(s), 6) for s in seqs], COMET, num_chunks=3).as_dict()
    else:
        from comet_jax.loss import next_token_labels
        tokens = np.zeros((4, 17), np.int32)
        for i, s in enumerate(seqs):
            tokens[i, : len(s)] = s
        lengths = np.array([len(s) for s in seqs], np.int32)
        batch = {"tokens": tokens, "lengths": lengths, "labels": np.asarray(next_token_labels(tokens, lengths))}
    p = init_params(MODEL, COMET, jax.random.key(1))
    results = []
    for accum in (1, 2, 4):
        # plain SGD: the update is the gradient itself (Adam would amplify rounding noise
        # of near-zero gradients to a full lr-sized step)
        tx, sched = optax.sgd(1.0), optax.constant_schedule(1.0)
        step = make_train_step(tx, sched, model=MODEL, comet=COMET, mode=mode, schedule="layer_major", remat=True,
                               grad_accum=accum)
        state = {"params": p, "opt_state": tx.init(p), "step": jnp.zeros((), jnp.int32)}
        state, m = step(jax.tree.map(jnp.array, state), batch)
        results.append((float(m["loss"]), state["params"]))
    for loss, params in results[1:]:
        assert loss == pytest.approx(results[0][0], rel=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), params, results[0][1])
