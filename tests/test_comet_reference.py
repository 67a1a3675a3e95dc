"""The library equals the plain reference (tests/reference_comet.py), loss and gradients.

The reference builds variable-length chunks token by token with Python loops; the
library uses static slots, masks and scans. They must agree to 1e-5 relative."""

import dataclasses
import json

import jax
import numpy as np
import pytest
from safetensors.numpy import save_file

from comet_jax import checkpoint, chunking, layout
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.convert.hf_import import convert
from comet_jax.model import comet as cm
from comet_jax.model.init import init_params
from comet_jax.model.rope import inv_frequencies
from numerics import assert_tree_close, rel_err
from reference_comet import reference_loss, reference_per_token_losses

MODEL = ModelConfig(vocab_size=64, num_real_tokens=61, hidden_size=32, intermediate_size=40, num_layers=2,
                    num_heads=4, num_kv_heads=2, head_dim=8, qk_norm=True, rms_eps=1e-6)
IDS = dict(placeholder_id=50, temp_beacon_id=51)


def comet_cfg(c, g, stride, budget):
    return CometConfig(chunk_size=c, global_size=g, stride=stride, budget=budget if stride > 0 else 0,
                       placeholder_id=50, temp_beacon_id=51 if stride > 0 else -1,
                       global_beacon_ids=tuple(range(52, 52 + g)))


def ref_cfgs(model, comet):
    cfg = dict(hidden_size=model.hidden_size, num_heads=model.num_heads, num_kv_heads=model.num_kv_heads,
               head_dim=model.head_dim, rms_eps=model.rms_eps, qk_norm=model.qk_norm,
               tie_embeddings=model.tie_embeddings, inv_freq=inv_frequencies(model.rope, model.head_dim),
               num_real_tokens=model.real_vocab)
    return cfg, dataclasses.asdict(comet) | {"global_beacon_ids": list(comet.global_beacon_ids)}


def perturbed_params(model, comet, seed):
    p = init_params(model, comet, jax.random.key(seed))
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def case_data(comet, lengths, planner, seed=0):
    """Random sequences of the given lengths and their chunk plans (semantic splits at ids 3, 7)."""
    rng = np.random.default_rng(seed)
    seqs = [rng.integers(0, 50, n) for n in lengths]
    extra = {"boundary_ids": (3, 7)} if planner == "semantic" else {}
    plans = [chunking.plan_by_name(planner, s, comet.chunk_size, rng=rng, **extra) for s in seqs]
    return seqs, plans


def compare(comet, lengths, planner, seed=0, grads=True):
    seqs, plans = case_data(comet, lengths, planner, seed)
    params = perturbed_params(MODEL, comet, seed)
    cfg, ccfg = ref_cfgs(MODEL, comet)
    batch = layout.build(seqs, plans, comet).as_dict()
    ours = jax.value_and_grad(cm.loss) if grads else cm.loss
    ref = jax.value_and_grad(reference_loss) if grads else reference_loss
    got = ours(params, batch, MODEL, comet)
    want = ref(params, cfg, ccfg, [s.tolist() for s in seqs], plans)
    if not grads:
        return rel_err(got, want), None
    loss_err = rel_err(got[0], want[0])
    # float32 rounding alone reaches ~1e-5 on the gate's gradient (a difference of nearly
    # equal terms); test_float64_agreement_is_exact shows the computations are identical.
    grad_err = assert_tree_close(got[1], want[1], rtol=2e-5)
    return loss_err, grad_err


CASES = {
    # name: (comet config, sequence lengths, planner)
    "stride_not_dividing_C": (comet_cfg(7, 3, 3, 4), [23, 9], "fixed"),
    "budget_larger_than_produced": (comet_cfg(8, 2, 4, 32), [26, 14, 5], "fixed"),
    "budget_smaller": (comet_cfg(6, 2, 2, 3), [20], "fixed"),
    "G0": (comet_cfg(8, 0, 3, 5), [19, 12], "fixed"),
    "stride_off": (comet_cfg(8, 4, -1, 0), [19, 12], "fixed"),
    "right_aligned": (comet_cfg(7, 2, 3, 4), [18, 11], "right_aligned"),
    "uniform": (comet_cfg(8, 2, 3, 4), [21, 13], "uniform"),
    "random": (comet_cfg(8, 2, 3, 4), [22, 9], "random"),
    "semantic": (comet_cfg(8, 2, 3, 4), [24, 10], "semantic"),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_library_equals_reference(name):
    comet, lengths, planner = CASES[name]
    loss_err, grad_err = compare(comet, lengths, planner, grads=name in (
        "stride_not_dividing_C", "budget_larger_than_produced", "G0", "stride_off", "random"))
    print(f"{name}: loss rel err {loss_err:.2g}" + (f", grad rel err {grad_err:.2g}" if grad_err is not None else ""))
    assert loss_err <= 1e-5


def test_per_token_losses_equal_reference():
    comet = comet_cfg(6, 2, 4, 3)
    rng = np.random.default_rng(7)
    seq = rng.integers(0, 50, 17)
    plan = chunking.fixed(17, 6)
    params = perturbed_params(MODEL, comet, 3)
    cfg, ccfg = ref_cfgs(MODEL, comet)
    lay = layout.build([seq], [plan], comet)
    nll = np.asarray(cm.token_losses(params, lay.as_dict(), MODEL, comet))
    ours = np.zeros(17, np.float32)
    idx = lay.raw_index >= 0
    ours[lay.raw_index[idx]] = nll[idx]
    ref = np.asarray(reference_per_token_losses(params, cfg, ccfg, seq.tolist(), plan))
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-6)


def test_official_checkpoint_lands_where_the_reference_expects(tmp_path):
    """An official-layout checkpoint written here from known arrays (torch (out, in)
    layout, `inner_layer.` infix, g_proj (1, 2D)) converts to the same model."""
    model = dataclasses.replace(MODEL, num_real_tokens=None)
    comet = comet_cfg(6, 2, 3, 4)
    params = jax.device_get(perturbed_params(model, comet, 11))
    lay = params["layers"]
    tensors = {"model.embed_tokens.weight": params["embed"], "model.norm.weight": params["final_norm"],
               "lm_head.weight": params["lm_head"].T}
    torch_names = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
                   "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
                   "wo": "self_attn.o_proj", "q_norm": "self_attn.q_norm", "k_norm": "self_attn.k_norm",
                   "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj", "w_down": "mlp.down_proj"}
    for i in range(model.num_layers):
        for ours, theirs in torch_names.items():
            w = lay[ours][i]
            tensors[f"model.layers.{i}.inner_layer.{theirs}.weight"] = w.T if w.ndim == 2 else w
        g, t = lay["global_mem"], lay["temp_mem"]
        tensors[f"model.layers.{i}.global_memory_net.norm.weight"] = g["norm"][i]
        tensors[f"model.layers.{i}.global_memory_net.g_proj.weight"] = g["gate"][i][None, :]
        tensors[f"model.layers.{i}.global_memory_net.o_proj.down_proj.weight"] = g["down"][i].T
        tensors[f"model.layers.{i}.global_memory_net.o_proj.up_proj.weight"] = g["up"][i].T
        tensors[f"model.layers.{i}.temp_memory_net.0.weight"] = t["norm"][i]
        tensors[f"model.layers.{i}.temp_memory_net.1.down_proj.weight"] = t["down"][i].T
        tensors[f"model.layers.{i}.temp_memory_net.1.up_proj.weight"] = t["up"][i].T
    src = tmp_path / "official"
    src.mkdir()
    save_file({k: np.ascontiguousarray(v, np.float32) for k, v in tensors.items()}, str(src / "model.safetensors"))
    (src / "config.json").write_text(json.dumps({
        "architectures": ["MemQwen3ForCausalLM"], "model_type": "qwen3", "vocab_size": 64, "hidden_size": 32,
        "intermediate_size": 40, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
        "head_dim": 8, "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "rope_theta": 10000.0,
        "chunk_size": 6, "placeholder_id": 50, "temp_beacon_id": 51, "temp_beacon_stride": 3,
        "temp_mem_budget": 4, "global_beacon_ids": [52, 53]}))
    convert(src, tmp_path / "ckpt", log=lambda m: None)
    got_params, got_model, got_comet, _ = checkpoint.load(tmp_path / "ckpt")
    assert got_comet == comet
    assert got_model.num_real_tokens == 64 and got_model.vocab_size == 256  # every official row stays live
    for leaf in ("embed", "lm_head"):  # rows beyond 64 only pad the vocabulary to 256
        rows = got_params[leaf][:64] if leaf == "embed" else got_params[leaf][:, :64]
        np.testing.assert_array_equal(rows, params[leaf])
    jax.tree.map(np.testing.assert_array_equal, got_params["layers"], params["layers"])
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 50, 20)]
    plans = [chunking.fixed(20, 6)]
    cfg, ccfg = ref_cfgs(got_model, got_comet)
    ours = cm.loss(got_params, layout.build(seqs, plans, got_comet).as_dict(), got_model, got_comet)
    ref = reference_loss(params, cfg, ccfg, [s.tolist() for s in seqs], plans)
    assert rel_err(ours, ref) <= 1e-5


def test_float64_agreement_is_exact():
    """In float64 the library and the reference agree to ~1e-15: the float32 differences
    above are rounding, not a different computation."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parent / "x64_check.py"
    cases = ["budget_larger_than_produced", "stride_not_dividing_C", "semantic"]
    proc = subprocess.run([sys.executable, str(script), *cases], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    worst = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"float64: loss rel err {worst['loss']:.2g}, grad rel err {worst['grad']:.2g}")
    assert worst["loss"] < 1e-12 and worst["grad"] < 1e-12
