"""Layer-level pipeline (docs/design.md §1.6): values and gradients equal the single-device
layer-major schedule; the stages talk only through collective-permutes."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax import layout
from comet_jax.config import CometConfig
from comet_jax.loss import IGNORE
from comet_jax.model import comet as cm
from comet_jax.parallel import sharding
from comet_jax.parallel.pipeline import pipeline_token_losses
from numerics import assert_tree_close
from test_comet import COMET, MODEL, random_params

CONFIGS = {
    "global+temp": COMET,
    "temp_only": CometConfig(chunk_size=7, stride=2, budget=9, placeholder_id=50, temp_beacon_id=51),  # G=0
    "global_only": CometConfig(chunk_size=7, global_size=2, placeholder_id=50, global_beacon_ids=(52, 53)),  # stride=-1
}


def make_mesh(p):
    return jax.make_mesh((p,), ("stage",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:p])


def _mean(nll, labels):
    return jnp.sum(nll) / jnp.maximum(jnp.sum(labels != IGNORE), 1)


def pipeline_loss(params, batch, comet, mesh, remat=True):
    nll = pipeline_token_losses(params, batch, MODEL, comet, mesh, remat=remat)
    return _mean(nll, batch["labels"]), nll


def reference_loss(params, batch, comet):
    nll = cm.token_losses(params, batch, MODEL, comet, "layer_major")
    return _mean(nll, batch["labels"]), nll


pipeline_grad = jax.jit(jax.value_and_grad(pipeline_loss, has_aux=True), static_argnames=("comet", "mesh", "remat"))
reference_grad = jax.jit(jax.value_and_grad(reference_loss, has_aux=True), static_argnames=("comet",))


# Every config and both stage counts, within the time budget (each case compiles twice).
@pytest.mark.parametrize("name, stages, n", [
    ("global+temp", 2, 4), ("global+temp", 4, 8), ("temp_only", 2, 4), ("global_only", 4, 8)])
def test_pipeline_equals_layer_major(mixed_plans, name, stages, n):
    comet = CONFIGS[name]
    seqs, plans = mixed_plans
    params = random_params(comet)
    b = layout.build(seqs, plans, comet, num_chunks=n).as_dict()  # n=8: trailing masked chunks
    (v0, nll0), g0 = reference_grad(params, b, comet)
    (v, nll), g = pipeline_grad(params, b, comet, make_mesh(stages))
    assert np.isfinite(float(v0)) and nll.shape == nll0.shape
    np.testing.assert_allclose(v, v0, rtol=1e-6)
    np.testing.assert_allclose(nll, nll0, rtol=1e-5, atol=1e-6)
    assert_tree_close(g, g0, rtol=1e-5)


def test_every_recompute_policy_gives_the_same_gradients(mixed_plans):
    """Each policy has its own checkpoint of the wavefront step (remat.wave_checkpointed)."""
    seqs, plans = mixed_plans
    params = random_params(COMET)
    b = layout.build(seqs, plans, COMET, num_chunks=4).as_dict()
    (v0, _), g0 = reference_grad(params, b, COMET)
    for remat in ("none", "dots", "offload"):
        (v, _), g = pipeline_grad(params, b, COMET, make_mesh(2), remat)
        np.testing.assert_allclose(v, v0, rtol=1e-6)
        assert_tree_close(g, g0, rtol=1e-5)


def test_chunks_not_divisible_raises(mixed_plans):
    seqs, plans = mixed_plans
    b = layout.build(seqs, plans, COMET, num_chunks=5).as_dict()
    with pytest.raises(ValueError, match="pad with fully masked chunks"):
        pipeline_token_losses(random_params(COMET), b, MODEL, COMET, make_mesh(2))


def test_hlo_stages_talk_by_permute_and_weight_exchange(mixed_plans):
    """Memories go to the next stage by collective-permute; a layer's weights are reassembled by
    all-to-all (each device holds 1/P of them); nothing sums a whole parameter's gradient: the
    only all-reduces are of leaves no dimension of which the stages divide, and scalars."""
    seqs, plans = mixed_plans
    b = layout.build(seqs, plans, COMET, num_chunks=4).as_dict()
    mesh = make_mesh(4)
    params = random_params(COMET)
    hlo = pipeline_grad.lower(params, b, COMET, mesh).compile().as_text()
    assert re.search(r"\bcollective-permute(-start)?\(", hlo)
    assert re.search(r"\ball-to-all(-start)?\(", hlo)
    whole = {x.size for x in jax.tree.leaves(params)}
    stage_dims = jax.tree.leaves(sharding.param_stage_dims(params, mesh), is_leaf=lambda d: d is None)
    kept = {x.size for x, d in zip(jax.tree.leaves(params), stage_dims) if d is None}
    assert kept != whole  # the test model has leaves of both kinds
    for shape in re.findall(r"= f32\[([\d,]*)\][^ ]* all-reduce(?:-start)?\(", hlo):
        size = int(np.prod([int(x) for x in shape.split(",") if x]))
        assert size <= max(kept | {1}) or size not in whole - kept, shape
