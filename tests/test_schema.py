"""The parameter schema (comet_jax/model/schema.py) is the parameter tree: same leaves and
shapes as init_params for every kind of model, and every leaf has one entry."""

import jax
import pytest

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.model import schema
from comet_jax.model.init import init_params

BOTH = CometConfig(chunk_size=8, global_size=2, stride=4, budget=4, placeholder_id=60, temp_beacon_id=61,
                   global_beacon_ids=(62, 63))
GLOBAL_ONLY = CometConfig(chunk_size=8, global_size=2, stride=-1, budget=0, placeholder_id=60,
                          global_beacon_ids=(62, 63))
TEMP_ONLY = CometConfig(chunk_size=8, global_size=0, stride=4, budget=4, placeholder_id=60, temp_beacon_id=61)


@pytest.mark.parametrize("comet", [BOTH, GLOBAL_ONLY, TEMP_ONLY, CometConfig()], ids=["both", "global", "temp", "none"])
@pytest.mark.parametrize("qk_norm, tied", [(False, False), (True, True)])
def test_schema_lists_exactly_the_leaves_of_the_model(comet, qk_norm, tied):
    model = ModelConfig(vocab_size=64, hidden_size=16, intermediate_size=24, num_layers=3, num_heads=4,
                        num_kv_heads=2, head_dim=6, qk_norm=qk_norm, tie_embeddings=tied)
    params = jax.eval_shape(lambda: init_params(model, comet, jax.random.key(0)))
    got = {".".join(str(k.key) for k in path): tuple(x.shape)
           for path, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    want = {path: shape for path, (_, shape) in schema.leaves(model, comet).items()}
    assert got == want
    for path, (leaf, shape) in schema.leaves(model, comet).items():
        assert len(leaf.axes) == len(shape) and all(a in schema.LOGICAL_AXES for a in leaf.axes)


def test_unknown_paths_are_named():
    with pytest.raises(KeyError, match="layers.w_qkv is not in the parameter schema"):
        schema.entry(("layers", "w_qkv"))
