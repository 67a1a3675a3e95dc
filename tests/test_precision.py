"""Mixed precision: bfloat16 compute with float32 parameters and optimizer state (the
accelerator default) tracks float32 training, and keeps its matmuls in bfloat16."""

import re

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax import chunking, layout
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.model.init import init_params
from comet_jax.train.optim import make_optimizer
from comet_jax.train.train_step import make_train_step

# hidden 96 appears in no other dimension (heads*head_dim 128, MLP 160, vocab 320), so a dot
# over [tokens x hidden] is recognisable in the HLO by its 96
D, V = 96, 320
COMET = CometConfig(chunk_size=16, global_size=4, stride=4, budget=8, placeholder_id=300, temp_beacon_id=301,
                    global_beacon_ids=(302, 303, 304, 305))
STEPS = 8


def model(dtype: str) -> ModelConfig:
    return ModelConfig(vocab_size=V, num_real_tokens=306, hidden_size=D, intermediate_size=160, num_layers=2,
                       num_heads=4, num_kv_heads=2, head_dim=32, dtype=dtype, param_dtype="float32")


def batch():
    """Sequences that repeat a random 8-token motif: a loss that training lowers quickly."""
    rng = np.random.default_rng(0)
    seqs = [np.tile(rng.integers(0, 256, 8), 8)[: n] for n in (64, 50, 64, 37)]
    return layout.build(seqs, [chunking.fixed(len(s), COMET.chunk_size) for s in seqs], COMET, num_chunks=4).as_dict()


def step_fn(dtype: str):
    m = model(dtype)
    params = init_params(m, COMET, jax.random.key(0))
    tx, sched = make_optimizer(params, lr=3e-3, total_steps=STEPS, warmup_steps=0)
    state = {"params": params, "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
    fn = make_train_step(tx, sched, model=m, comet=COMET, mode="comet", schedule="layer_major", remat="full",
                         grad_accum=1)
    return fn, state


def test_bfloat16_training_tracks_float32():
    data = batch()
    curves = {}
    for dtype in ("float32", "bfloat16"):
        fn, state = step_fn(dtype)
        losses = []
        for _ in range(STEPS):
            state, metrics = fn(state, data)
            losses.append(float(metrics["loss"]))
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(state["params"]))
        curves[dtype] = np.array(losses)
    f32, bf16 = curves["float32"], curves["bfloat16"]
    assert f32[-1] < 0.8 * f32[0]  # it learns, so the curves are worth comparing
    # measured: at most 0.11% apart over 12 steps
    np.testing.assert_allclose(bf16, f32, rtol=5e-3)


def test_bfloat16_matmuls_over_the_hidden_size_are_bfloat16():
    """Every dot in the lowered train step that has the hidden size as an operand dimension takes
    bfloat16 operands, except the LM head's (vocabulary dimension), whose logits and their
    gradients are float32 by design (docs/design.md §4.5)."""
    fn, state = step_fn("bfloat16")
    text = fn.lower(state, batch()).as_text()
    dots = re.findall(r"stablehlo\.dot_general.*?: \((tensor<[^>]*>), (tensor<[^>]*>)\) -> (tensor<[^>]*>)", text)
    assert len(dots) > 20
    dims = lambda t: [int(x) for x in re.findall(r"(\d+)x", t)]  # noqa: E731
    over_hidden = [d for d in dots if any(D in dims(t) for t in d[:2])]
    assert over_hidden
    f32 = [d for d in over_hidden if any(t.endswith("xf32>") for t in d[:2]) and not any(V in dims(t) for t in d[:2])]
    assert not f32, f"float32 matmuls over the hidden size: {f32}"
    lm_head = [d for d in over_hidden if any(V in dims(t) for t in d[:2])]
    assert any(d[2].endswith("xf32>") for d in lm_head)  # the logits are float32
    gate = [d for d in dots if any(2 * D in dims(t) for t in d[:2])]  # the memory gate reads [x̂; s], 2D wide
    assert gate and all(d[2].endswith("xf32>") for d in gate if d[0].endswith("xbf16>"))  # its logit is float32
