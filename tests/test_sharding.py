"""Mesh construction (comet_jax/parallel/sharding.make_mesh): shapes on fake CPU devices, and
the physical placement on real TPU topology descriptions (libtpu, requirements-dev.txt)."""

import importlib.util

import jax
import numpy as np
import pytest

from comet_jax.parallel import sharding

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None
needs_libtpu = pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu (requirements-dev.txt) is not installed")


def test_cpu_mesh_has_the_requested_shape_in_device_order():
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2, stage=1)
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2, "stage": 1}
    assert [d.id for d in mesh.devices.flat] == [d.id for d in jax.devices()]


def test_mesh_errors_name_the_product_and_the_slices():
    with pytest.raises(ValueError, match=r"data\*fsdp\*tensor\*stage = 1\*3\*1\*1 = 3 but 8 devices"):
        sharding.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="multiple of mesh.slices"):
        sharding.make_mesh(data=1, fsdp=8, slices=2)
    with pytest.raises(ValueError, match="from 1 slice"):
        sharding.make_mesh(data=2, fsdp=4, slices=2)


def _hops(a, b) -> int:
    return int(np.abs(np.asarray(a.coords) - np.asarray(b.coords)).sum())


@needs_libtpu
def test_tpu_mesh_puts_the_inner_axes_on_physical_neighbours():
    from comet_jax import aot

    devices = aot.tpu_devices("v5e:4x4")
    rng = np.random.default_rng(0)
    shuffled = [devices[i] for i in rng.permutation(len(devices))]  # list order must not matter
    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=4, stage=1, devices=shuffled)
    assert dict(mesh.shape) == {"data": 1, "fsdp": 4, "tensor": 4, "stage": 1}
    grid = mesh.devices[0, :, :, 0]
    for row in grid:  # each tensor group is a line of 4 neighbouring chips
        assert all(_hops(a, b) == 1 for a, b in zip(row, row[1:]))
    plain = np.asarray(shuffled).reshape(4, 4)  # what reshaping the list would have given
    assert not all(_hops(a, b) == 1 for row in plain for a, b in zip(row, row[1:]))


@needs_libtpu
def test_multi_slice_mesh_keeps_each_slice_inside_one_data_group():
    from comet_jax import aot

    devices = aot.tpu_devices("v5e:2x2", slices=2)
    assert {d.slice_index for d in devices} == {0, 1}
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2, stage=1, devices=devices, slices=2)
    for i in range(2):  # data index i = slice i: fsdp x tensor never cross the DCN
        assert {d.slice_index for d in mesh.devices[i].flat} == {i}


MODEL_KW = dict(vocab_size=512, hidden_size=64, intermediate_size=96, num_layers=2, num_heads=4, num_kv_heads=2,
                head_dim=16)


def _params():
    from comet_jax.config import CometConfig, ModelConfig
    from comet_jax.model.init import init_params

    comet = CometConfig(chunk_size=8, global_size=2, stride=4, budget=4, placeholder_id=500, temp_beacon_id=501,
                        global_beacon_ids=(502, 503))
    return jax.eval_shape(lambda: init_params(ModelConfig(**MODEL_KW), comet, jax.random.key(0)))


def test_default_rules_shard_weights_over_fsdp_and_tensor():
    from jax.sharding import PartitionSpec as P

    specs = sharding.param_specs(_params(), sharding.make_mesh(data=2, fsdp=2, tensor=2))
    lay = specs["layers"]
    assert lay["wq"] == P(None, "fsdp", "tensor") and lay["wo"] == P(None, "tensor", "fsdp")
    assert lay["w_up"] == P(None, "fsdp", "tensor") and lay["w_down"] == P(None, "tensor", "fsdp")
    assert specs["embed"] == P("tensor", "fsdp") and specs["lm_head"] == P("fsdp", "tensor")
    assert lay["attn_norm"] == P(None, None) and lay["global_mem"]["down"] == P(None, None, None)


def test_rule_overrides_and_their_errors():
    from jax.sharding import PartitionSpec as P

    from comet_jax.config import ConfigError

    mesh = sharding.make_mesh(data=1, fsdp=4, tensor=2)
    specs = sharding.param_specs(_params(), mesh, {"mlp": "", "vocab": "fsdp,tensor", "embed": "tensor"})
    assert specs["layers"]["w_up"] == P(None, "tensor", None)
    # a mesh axis serves one dimension of an array; the earlier rule (embed) takes it first
    assert specs["embed"] == P(None, "tensor")
    # 96 over tensor=4 divides, 64 over fsdp=2 too; 96 over tensor=64 would not: it stays whole
    mesh = sharding.make_mesh(fsdp=2, tensor=4)
    assert sharding.logical_spec(("embed", "q_heads"), (64, 96), mesh) == P("fsdp", "tensor")
    assert sharding.logical_spec(("embed", "q_heads"), (64, 90), mesh) == P("fsdp", None)
    with pytest.raises(ConfigError, match="mesh.rules.hiden: unknown logical axis"):
        sharding.check_rules({"hiden": "fsdp"})
    with pytest.raises(ConfigError, match="mesh.rules.mlp=model: model is not a mesh axis"):
        sharding.check_rules({"mlp": "model"})


def test_activations_are_pinned_under_a_mesh_only():
    import jax.numpy as jnp

    from comet_jax.model import backbone

    def f(h):
        return sharding.constrain(h * 2, backbone.ACTIVATION)

    h = jnp.ones((8, 4, 16))
    assert "sharding_constraint" not in jax.jit(f).lower(h).as_text()
    mesh = sharding.make_mesh(data=2, fsdp=4)
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        text = jax.jit(f).lower(h).as_text()
    assert 'sharding_constraint' in text and '{"data", "fsdp"}' in text


def test_pipeline_splits_every_parameter_over_stage_too():
    """With mesh.stage > 1 no device holds a whole parameter or optimizer moment: every leaf of
    a Llama-3-8B-shaped model is split over stage on a dimension that is not the stacked layer
    axis, stage-major beside tensor, and the per-device bytes are the whole over all 16 chips."""
    import math

    from jax.sharding import AbstractMesh, AxisType, PartitionSpec as P

    from comet_jax import build
    from comet_jax.model.init import init_params

    model, comet = build.scratch(128000, chunk_size=2048, global_size=512, stride=8, budget=2048, hidden_size=4096,
                                 intermediate_size=14336, num_layers=32, num_heads=32, num_kv_heads=8, head_dim=128)
    params = jax.eval_shape(lambda: init_params(model, comet, jax.random.key(0)))
    mesh = AbstractMesh((1, 4, 1, 4), sharding.AXES, axis_types=(AxisType.Auto,) * 4)
    specs = sharding.param_specs(params, mesh)
    lay = specs["layers"]
    # (a size-1 tensor axis stays named; it splits nothing)
    assert lay["wq"] == P(None, "fsdp", ("stage", "tensor")) and lay["w_down"] == P(None, ("stage", "tensor"), "fsdp")
    assert specs["embed"] == P(("stage", "tensor"), "fsdp") and lay["attn_norm"] == P(None, "stage")
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    held = whole = 0
    for x, spec in zip(jax.tree.leaves(params), jax.tree.leaves(specs, is_leaf=lambda s: isinstance(s, P))):
        names = [a for t in spec for a in ((t,) if isinstance(t, str) else (t or ()))]
        assert "stage" in names or x.size < 1000, (x.shape, spec)
        held += x.size // math.prod(sizes[a] for a in names)
        whole += x.size
    # norm scales and the memory nets are split over stage only (0.2% over a 16th)
    assert whole / 16 <= held <= whole / 16 * 1.005
    # with tensor too, stage comes first on the shared dimension (a stage's block is contiguous)
    mesh = AbstractMesh((1, 2, 2, 4), sharding.AXES, axis_types=(AxisType.Auto,) * 4)
    assert sharding.param_specs(params, mesh)["layers"]["wq"] == P(None, "fsdp", ("stage", "tensor"))


def test_the_weight_average_is_sharded_as_the_parameters(tmp_path):
    """optim.ema > 0: the train state's moving average of the weights (what a run exports) has
    each parameter's sharding, so it costs each device its share and no gather."""
    from pathlib import Path

    from comet_jax.train.optim import ema_params
    from comet_jax.train.train_config import load_config
    from comet_jax.train.trainer import Trainer

    config = Path(__file__).resolve().parents[1] / "configs" / "tiny_cpu.yaml"
    cfg = load_config(str(config), [f"run.dir={tmp_path}", "mesh.fsdp=4", "mesh.tensor=2", "optim.ema=0.99",
                                    "train.batch_size=8"])
    state = Trainer(cfg, log=lambda *_: None).init_state()
    params, ema = state["params"], ema_params(state["opt_state"])
    assert jax.tree.structure(ema) == jax.tree.structure(params)
    pairs = list(zip(jax.tree.leaves(ema), jax.tree.leaves(params)))
    # (a replicated leaf's spec may read P() on one side and P(None,) on the other: the same placement)
    assert all(e.shape == p.shape and e.sharding.is_equivalent_to(p.sharding, p.ndim) for e, p in pairs)
    assert sum(not p.sharding.is_fully_replicated for _, p in pairs) >= len(pairs) // 2  # most are split
