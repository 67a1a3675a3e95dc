"""The attention switch: `attention=splash` (the Pallas kernel, interpret mode on CPU) computes
the losses and gradients of `attention=xla`, the dense-mask reference, on CoMeT chunks and in
full mode; `auto` picks a kernel per backend.

Shapes are tiny: interpret mode runs the kernel's grid as a Python-level loop."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax import checkpoint, layout
from comet_jax.config import ConfigError, ModelConfig
from comet_jax.loss import IGNORE, next_token_labels
from comet_jax.model import attention, backbone
from comet_jax.model import comet as cm
from comet_jax.model.init import init_params
from comet_jax.parallel import sharding
from numerics import assert_tree_close, rel_err
from test_comet_reference import CASES, MODEL, case_data, perturbed_params

XLA = dataclasses.replace(MODEL, attention="xla")
SPLASH = dataclasses.replace(MODEL, attention="splash")


def random_qkv(b, t, h=4, kv=2, hd=8, seed=0):
    rng = np.random.default_rng(seed)
    q, k, v = (jnp.asarray(rng.normal(size=(b, t, n, hd)), jnp.float32) for n in (h, kv, kv))
    return q, k, v


# --------------------------------------------------------------------------- CoMeT losses

@pytest.mark.parametrize("name", ["budget_larger_than_produced", "stride_not_dividing_C", "G0", "stride_off"])
def test_comet_loss_and_grads_splash_equal_xla(name):
    """Padding chunks and partial temp queues (budget_larger_than_produced: the third sequence
    has one chunk of four), stride not dividing C, G = 0, stride = -1; GQA (4 heads over 2)."""
    comet, lengths, planner = CASES[name]
    seqs, plans = case_data(comet, lengths, planner)
    params = perturbed_params(MODEL, comet, 0)
    batch = layout.build(seqs, plans, comet).as_dict()
    want = jax.value_and_grad(cm.loss)(params, batch, XLA, comet)
    got = jax.value_and_grad(cm.loss)(params, batch, SPLASH, comet)
    loss_err = rel_err(got[0], want[0])
    grad_err = assert_tree_close(got[1], want[1], rtol=1e-4)
    print(f"{name}: loss rel err {loss_err:.2g}, grad rel err {grad_err:.2g}")
    assert loss_err <= 1e-5


def test_chunk_attention_equals_the_dense_mask_at_valid_slots():
    """Per slot, not only through a loss: 37 slots are padded to the kernel's 128."""
    q, k, v = random_qkv(2, 37)
    valid = jnp.asarray(np.random.default_rng(1).random((2, 37)) < 0.7)
    want = np.asarray(backbone.attend(q, k, v, cm.chunk_mask(valid)))
    got = np.asarray(attention.chunk_attention(SPLASH, valid)(q, k, v))
    m = np.asarray(valid)
    np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-6)


def test_blockwise_causal_equals_the_dense_causal_mask():
    """The xla full-mode prefill: 4 query blocks of 16, ragged lengths (keys past them masked)."""
    q, k, v = random_qkv(3, 64)
    lengths = jnp.asarray([64, 37, 1])
    want = np.asarray(backbone.attend(q, k, v, backbone.causal_mask(lengths, 64)))
    got = np.asarray(jax.jit(attention.blockwise_causal, static_argnums=4)(q, k, v, lengths, 16))
    live = np.arange(64)[None, :] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(got[live], want[live], rtol=1e-5, atol=1e-6)


def test_cudnn_formulation_equals_the_dense_mask(monkeypatch):
    """The cuDNN call cannot be traced without cuDNN; the same arguments under jax's own
    implementation show its masks mean what xla's do. cuDNN (unlike xla) refuses a mask that
    broadcasts over queries, so the chunk mask must arrive whole: [B, 1, T, S]."""
    q, k, v = random_qkv(2, 21)
    valid = jnp.asarray(np.random.default_rng(2).random((2, 21)) < 0.7)
    m = np.asarray(valid)
    want = np.asarray(backbone.attend(q, k, v, cm.chunk_mask(valid)))
    dpa, shapes = jax.nn.dot_product_attention, []
    monkeypatch.setattr(jax.nn, "dot_product_attention",
                        lambda *a, mask=None, **kw: shapes.append(mask.shape) or dpa(*a, mask=mask, **kw))
    got = np.asarray(attention._cudnn_chunk(q, k, v, valid, implementation="xla"))
    monkeypatch.undo()
    assert shapes == [(2, 1, 21, 21)]
    np.testing.assert_allclose(got[m], want[m], rtol=1e-5, atol=1e-6)
    lengths = jnp.asarray([21, 9])
    want = np.asarray(backbone.causal_attend(q, k, v, lengths))
    got = np.asarray(attention._cudnn(q, k, v, implementation="xla", query_seq_lengths=lengths,
                                      key_value_seq_lengths=lengths))
    live = np.arange(21)[None] < np.asarray(lengths)[:, None]
    np.testing.assert_allclose(got[live], want[live], rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------- full mode

def test_full_mode_loss_and_grads_splash_equal_xla():
    """Ragged lengths (one row empty), 150 tokens: two kernel blocks, the second partial."""
    rng = np.random.default_rng(3)
    lengths = jnp.asarray([150, 61, 0])
    tokens = jnp.asarray(rng.integers(0, 50, (3, 150)), jnp.int32)
    labels = next_token_labels(tokens, lengths)
    params = perturbed_params(MODEL, CASES["G0"][0], 1)

    def mean_loss(p, model):
        nll = backbone.full_token_losses(p, tokens, lengths, labels, model)
        return jnp.sum(nll) / jnp.sum(labels != IGNORE)

    want = jax.value_and_grad(mean_loss)(params, XLA)
    got = jax.value_and_grad(mean_loss)(params, SPLASH)
    assert rel_err(got[0], want[0]) <= 1e-5
    assert_tree_close(got[1], want[1], rtol=1e-4)


def test_full_generation_prefill_splash_equals_xla():
    """Generation's full-mode prefill runs the whole prompt through the kernel in one pass;
    the next-token logits and one decoded step (xla over the cache) equal the block prefill's."""
    from comet_jax.infer.generate import Generator, Sampling

    params = perturbed_params(MODEL, CASES["G0"][0], 2)
    rng = np.random.default_rng(4)
    prompts = [rng.integers(0, 50, n) for n in (20, 7)]
    forced = rng.integers(0, 50, (2, 3))
    outs = [Generator(params, m, mode="full", full_block=16).generate(
        prompts, Sampling(max_new_tokens=3), forced=forced, record=True) for m in (XLA, SPLASH)]
    np.testing.assert_allclose(outs[1].logits, outs[0].logits, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- mesh, auto, config

def test_splash_is_split_over_a_mesh():
    """On a mesh in context the kernel runs under shard_map, batch over data x fsdp and kv
    heads over tensor; the numbers do not change."""
    q, k, v = random_qkv(4, 20)
    valid = jnp.asarray(np.random.default_rng(5).random((4, 20)) < 0.8)
    seg = jnp.where(valid, 0, 1).astype(jnp.int32)
    want = np.asarray(jax.jit(attention.splash_causal)(q, k, v, seg))
    mesh = sharding.make_mesh(data=2, fsdp=1, tensor=2, stage=1, devices=jax.devices()[:4])
    with jax.set_mesh(mesh):
        lowered = jax.jit(attention.splash_causal).lower(q, k, v, seg)
        got = np.asarray(lowered.compile()(q, k, v, seg))
    assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def test_splash_inside_the_pipeline_values_and_grads():
    """The wavefront pipeline is a shard_map over `stage`; the kernel's own shard_map nests
    inside it over the batch axes. On fsdp 2 x stage 2, with the parameters split over both as
    the trainer stores them, loss and gradients equal xla's single-device layer-major ones."""
    from comet_jax.parallel.pipeline import pipeline_token_losses

    comet, lengths, planner = CASES["budget_larger_than_produced"]
    seqs, plans = case_data(comet, lengths[:2], planner)
    batch = layout.build(seqs, plans, comet, num_chunks=4).as_dict()
    params = perturbed_params(MODEL, comet, 0)
    mesh = sharding.make_mesh(data=1, fsdp=2, tensor=1, stage=2, devices=jax.devices()[:4])
    mean = lambda nll: jnp.sum(nll) / jnp.sum(batch["labels"] != IGNORE)  # noqa: E731
    want, want_g = jax.value_and_grad(lambda p: mean(cm.token_losses(p, batch, XLA, comet)))(params)
    placed = jax.device_put(params, sharding.shardings(sharding.param_specs(params, mesh), mesh))
    with sharding.tracing(mesh, {}):
        fn = jax.jit(jax.value_and_grad(lambda p: mean(pipeline_token_losses(p, batch, SPLASH, comet, mesh))))
        text = fn.lower(placed).as_text()
        got, got_g = fn(placed)
    # the kernel's shard_map nests in the pipeline's (interpret mode: no custom call on CPU)
    assert text.count("sdy.manual_computation") >= 2, text.count("sdy.manual_computation")
    assert rel_err(got, want) <= 1e-5
    assert_tree_close(got_g, want_g, rtol=1e-4)


def test_auto_resolves_per_backend(capsys):
    attention._notice.cache_clear()
    assert attention.resolve("auto", "float32") == "xla"  # this machine: CPU
    assert attention.resolve("auto", "bfloat16", backend="cpu") == "xla"
    assert attention.resolve("auto", "float32", backend="tpu") == "splash"
    assert attention.resolve("auto", "bfloat16", backend="gpu") == "cudnn"
    assert attention.resolve("auto", "float16", backend="gpu") == "cudnn"
    assert capsys.readouterr().err == ""
    assert attention.resolve("auto", "float32", backend="gpu") == "xla"
    assert attention.resolve("auto", "float32", backend="gpu") == "xla"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "using xla" in err
    assert attention.resolve("splash", "float32", backend="gpu") == "splash"
    assert not attention.uses_kernel(MODEL)


def test_attention_setting_is_checked():
    with pytest.raises(ConfigError, match="model.attention must be one of auto, xla, splash, cudnn"):
        dataclasses.replace(MODEL, attention="flash").validate()
    with pytest.raises(ValueError, match="model.attention"):
        attention.resolve("flash", "float32")


def test_attention_is_not_part_of_the_resume_identity():
    """A run may resume under another kernel: the identity a checkpoint is checked against
    leaves model.attention out (as it leaves the compute dtype out)."""
    from types import SimpleNamespace

    from comet_jax.train.trainer import Trainer
    from comet_jax.train.train_config import load_config

    cfg = load_config(None, [])
    comet = CASES["G0"][0]
    ids = [Trainer.identity(SimpleNamespace(model=m, comet=comet, mode="comet", cfg=cfg)) for m in (XLA, SPLASH)]
    assert ids[0] == ids[1] and "model.hidden_size" in ids[0] and "model.attention" not in ids[0]


# --------------------------------------------------------------------------- eval.loss

def test_eval_loss_splash_equals_xla(tmp_path, capsys):
    from comet_jax.evals import loss as eval_loss

    comet = CASES["budget_larger_than_produced"][0]
    model = ModelConfig(**{**dataclasses.asdict(MODEL), "rope": MODEL.rope, "num_real_tokens": 61})
    checkpoint.save(tmp_path / "ckpt", init_params(model, comet, jax.random.key(0)), model, comet)
    rng = np.random.default_rng(6)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input_ids": rng.integers(0, 50, n).tolist()}) + "\n" for n in (19, 5, 12)))
    per = {}
    for kind in ("xla", "splash"):
        assert eval_loss.main(["--checkpoint", str(tmp_path / "ckpt"), "--data", str(data), "--mode", "comet",
                               "--batch-size", "2", "--attention", kind]) == 0
        per[kind] = [p["loss"] for p in json.loads(capsys.readouterr().out.strip().splitlines()[-1])["per_sequence"]]
    np.testing.assert_allclose(per["splash"], per["xla"], rtol=1e-5)
