"""Tests of the independent CoMeT oracle (tests/reference_comet.py).

The oracle's backbone is checked against HF transformers; its CoMeT behaviour is checked
against properties that follow directly from docs/design.md §1.2-1.3 (layout, chunk isolation
without memory, information flow through memory, causality across chunks, gradients).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from reference_comet import (
    build_chunk,
    cross_entropy,
    reference_full_logits,
    reference_loss,
    reference_per_token_losses,
)

# ----------------------------------------------------------------------------- HF backbone check


def hf_model(kind):
    common = dict(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2,
                  rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    if kind == "llama":  # untied, head_dim * heads == hidden
        config = transformers.LlamaConfig(head_dim=8, tie_word_embeddings=False, rms_norm_eps=1e-5, **common)
        cls = transformers.LlamaForCausalLM
    else:  # Qwen3: q/k norm, tied embeddings, head_dim * heads (48) != hidden (32)
        config = transformers.Qwen3Config(head_dim=12, tie_word_embeddings=True, rms_norm_eps=1e-6, **common)
        cls = transformers.Qwen3ForCausalLM
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config).eval().float()
    with torch.no_grad():  # perturb every RMSNorm weight away from 1 so a missing norm shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def hf_to_params(model):
    """HF state dict -> the oracle's params/cfg (torch Linear (out, in) -> (in, out))."""
    c = model.config
    sd = {k: v.detach().float().numpy() for k, v in model.state_dict().items()}
    qk_norm = c.model_type == "qwen3"
    tied = bool(c.tie_word_embeddings)
    names = {"attn_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm",
             "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj",
             "wo": "self_attn.o_proj", "w_gate": "mlp.gate_proj", "w_up": "mlp.up_proj",
             "w_down": "mlp.down_proj"}
    if qk_norm:
        names.update(q_norm="self_attn.q_norm", k_norm="self_attn.k_norm")
    layers = {}
    for ours, theirs in names.items():
        ws = [sd[f"model.layers.{i}.{theirs}.weight"] for i in range(c.num_hidden_layers)]
        layers[ours] = jnp.asarray(np.stack([w.T if w.ndim == 2 else w for w in ws]))
    params = {"embed": jnp.asarray(sd["model.embed_tokens.weight"]),
              "final_norm": jnp.asarray(sd["model.norm.weight"]), "layers": layers}
    if not tied:
        params["lm_head"] = jnp.asarray(sd["lm_head.weight"].T)
    hd = c.head_dim
    theta = c.rope_parameters["rope_theta"]
    cfg = dict(hidden_size=c.hidden_size, num_heads=c.num_attention_heads, num_kv_heads=c.num_key_value_heads,
               head_dim=hd, rms_eps=c.rms_norm_eps, qk_norm=qk_norm, tie_embeddings=tied,
               inv_freq=1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float32) / hd)),
               num_real_tokens=c.vocab_size)
    return params, cfg


@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_full_logits_match_hf(kind):
    model = hf_model(kind)
    params, cfg = hf_to_params(model)
    tokens = np.random.default_rng(1).integers(0, 128, 23)
    with torch.no_grad():
        want = model(torch.as_tensor(tokens)[None]).logits[0].float().numpy()
    got = np.asarray(reference_full_logits(params, cfg, tokens.tolist()))
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------- random CoMeT models

V, D, H, K, HD, F, L = 128, 32, 4, 2, 8, 64, 2
REAL = 110  # rows >= 110 are vocabulary padding: -inf logits (§1.4)
PH, TB, GB = 100, 101, [102, 103, 104, 105]  # placeholder, temp beacon, global beacons
CFG = dict(hidden_size=D, num_heads=H, num_kv_heads=K, head_dim=HD, rms_eps=1e-6, qk_norm=True,
           tie_embeddings=False, inv_freq=1.0 / (10000.0 ** (np.arange(0, HD, 2, dtype=np.float32) / HD)),
           num_real_tokens=REAL)


def comet(G=4, stride=4, budget=6, C=8):
    return dict(chunk_size=C, global_size=G, stride=stride, budget=budget, placeholder_id=PH,
                temp_beacon_id=TB, global_beacon_ids=GB[:G])


def random_params(G=4, stride=4, seed=0):
    """Random float32 params; memory nets nonzero so that memory visibly carries information."""
    rng = np.random.default_rng(seed)
    n = lambda *s, std=0.2: jnp.asarray(rng.normal(0.0, std, s), jnp.float32)
    norm = lambda *s: jnp.asarray(1.0 + 0.2 * rng.normal(size=s), jnp.float32)
    layers = dict(attn_norm=norm(L, D), mlp_norm=norm(L, D), wq=n(L, D, H * HD), wk=n(L, D, K * HD),
                  wv=n(L, D, K * HD), wo=n(L, H * HD, D), q_norm=norm(L, HD), k_norm=norm(L, HD),
                  w_gate=n(L, D, F), w_up=n(L, D, F), w_down=n(L, F, D))
    if G > 0:
        layers["global_mem"] = dict(norm=norm(L, D), gate=n(L, 2 * D), down=n(L, D, 8), up=n(L, 8, D))
    if stride > 0:
        layers["temp_mem"] = dict(norm=norm(L, D), down=n(L, D, 8), up=n(L, 8, D))
    return dict(embed=n(V, D, std=1.0), final_norm=norm(D), lm_head=n(D, V), layers=layers)


def raw_tokens(n, seed=0):
    return np.random.default_rng(seed).integers(0, 100, n).tolist()  # text ids only, never special


def chunk_slices(plan):
    starts = np.cumsum([0] + list(plan))
    return [slice(int(a), int(b)) for a, b in zip(starts[:-1], starts[1:])]


# ----------------------------------------------------------------------------- layout (§1.2)


def test_layout_token_by_token():
    cm = comet(G=2, stride=3, budget=4)
    first = build_chunk(cm, [1, 2, 3, 4, 5, 6, 7], 0, 0)
    # no placeholders in chunk 0; beacons after 3, 6 and the final partial group; G beacons at the end
    assert first["tokens"] == [1, 2, 3, TB, 4, 5, 6, TB, 7, TB, 102, 103]
    assert first["text"] == [0, 1, 2, 4, 5, 6, 8] and first["temp_beacon"] == [3, 7, 9]
    later = build_chunk(cm, [8, 9], 1, 3)  # m = min(budget 4, 3 earlier beacons) = 3
    assert later["tokens"] == [PH, PH, PH, PH, PH, 8, 9, TB, 102, 103]
    assert later["global_ph"] == [0, 1] and later["temp_ph"] == [2, 3, 4]
    assert build_chunk(cm, [8], 2, 9)["temp_ph"] == [2, 3, 4, 5]  # capped at the budget
    assert build_chunk(comet(G=0, stride=-1), [8, 9], 3, 0)["tokens"] == [8, 9]


# ----------------------------------------------------------------------------- no-memory equivalences


def test_single_chunk_without_memory_equals_full_backbone():
    cm = comet(G=0, stride=-1, C=16)
    params = random_params(G=0, stride=-1)
    toks = raw_tokens(13)
    got = reference_per_token_losses(params, CFG, cm, toks, [13])
    logits = reference_full_logits(params, CFG, toks)
    want = cross_entropy(logits[:-1], toks[1:])
    assert got.shape == (13,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got[:-1], want, atol=1e-5, rtol=1e-5)
    assert float(got[-1]) == 0.0
    # vocabulary padding rows (>= REAL) are -inf, so the CE runs over the real rows only (§1.4)
    assert np.all(np.asarray(logits)[:, REAL:] == -np.inf) and np.all(np.isfinite(np.asarray(logits)[:, :REAL]))
    real = np.asarray(logits)[:-1, :REAL]
    ce = -jax.nn.log_softmax(real, -1)[np.arange(12), np.asarray(toks[1:])]
    np.testing.assert_allclose(got[:-1], ce, atol=1e-5, rtol=1e-5)


def test_chunks_without_memory_are_independent():
    cm = comet(G=0, stride=-1, C=8)
    params = random_params(G=0, stride=-1)
    plan = [5, 8, 3, 8]
    toks = raw_tokens(sum(plan))
    got = np.asarray(reference_per_token_losses(params, CFG, cm, toks, plan))
    # each chunk is a fresh backbone pass at positions 0..len-1; its last token predicts the
    # first token of the next chunk (labels are taken before chunking, §1.2 step 1)
    for sl in chunk_slices(plan):
        logits = reference_full_logits(params, CFG, toks[sl])
        labels = toks[sl.start + 1:sl.stop + 1]
        want = np.asarray(cross_entropy(logits[:len(labels)], labels))
        np.testing.assert_allclose(got[sl][:len(labels)], want, atol=1e-5, rtol=1e-5)
    # and changing any other chunk's text leaves a chunk's losses untouched
    # (only the label of the token just before the change may move)
    other = list(toks)
    other[0] = (other[0] + 1) % 100
    other[20] = (other[20] + 1) % 100
    changed = np.asarray(reference_per_token_losses(params, CFG, cm, other, plan))
    sl = chunk_slices(plan)[1]
    np.testing.assert_array_equal(changed[sl], got[sl])


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("G,stride", [(4, 4), (4, -1), (0, 4)])
def test_memory_carries_information_forward_only(G, stride):
    cm = comet(G=G, stride=stride, budget=6, C=8)
    params = random_params(G=G, stride=stride, seed=1)
    plan = [8, 6, 8, 5]
    toks = raw_tokens(sum(plan), seed=2)
    sls = chunk_slices(plan)
    base = np.asarray(reference_per_token_losses(params, CFG, cm, toks, plan))
    assert np.all(np.isfinite(base)) and base[-1] == 0.0

    early = list(toks)
    early[2] = (early[2] + 7) % 100  # a token of chunk 0 ...
    moved = np.asarray(reference_per_token_losses(params, CFG, cm, early, plan))
    last = sls[-1]
    # ... changes every labeled loss of the last chunk: only memory connects them
    assert np.all(np.abs(moved[last][:-1] - base[last][:-1]) > 1e-6), (moved[last], base[last])

    late = list(toks)
    late[sls[-1].start + 1] = (late[sls[-1].start + 1] + 7) % 100  # a token of the last chunk ...
    after = np.asarray(reference_per_token_losses(params, CFG, cm, late, plan))
    # ... leaves every loss of chunk 0 bit-identical (memory flows forward, attention is chunk-local)
    np.testing.assert_array_equal(after[sls[0]], base[sls[0]])


def test_memory_is_off_when_disabled():
    """G=0, stride=-1: memory params are absent and a prefix chunk has no effect downstream."""
    cm = comet(G=0, stride=-1)
    params = random_params(G=0, stride=-1)
    assert "global_mem" not in params["layers"] and "temp_mem" not in params["layers"]
    toks = raw_tokens(16)
    a = np.asarray(reference_per_token_losses(params, CFG, cm, toks, [8, 8]))
    b = np.asarray(reference_per_token_losses(params, CFG, cm, [1] * 8 + toks[8:], [8, 8]))
    np.testing.assert_array_equal(a[8:], b[8:])


# ----------------------------------------------------------------------------- gradients


def test_grad_through_reference_loss():
    cm = comet(G=4, stride=4, budget=6, C=8)
    params = random_params(G=4, stride=4, seed=3)
    # plans share chunk layouts with test_memory_carries_information_forward_only (compile reuse)
    batch = [raw_tokens(22, seed=4), raw_tokens(14, seed=5)]
    plans = [[8, 6, 8], [8, 6]]
    loss_fn = lambda p: reference_loss(p, CFG, cm, batch, plans)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    per = [reference_per_token_losses(params, CFG, cm, t, pl) for t, pl in zip(batch, plans)]
    np.testing.assert_allclose(loss, sum(float(jnp.sum(x)) for x in per) / (21 + 13), rtol=1e-6)
    leaves = jax.tree_util.tree_leaves_with_path(grads)
    for path, g in leaves:
        assert np.all(np.isfinite(np.asarray(g))), jax.tree_util.keystr(path)
    for net, names in [("global_mem", ["norm", "gate", "down", "up"]), ("temp_mem", ["norm", "down", "up"])]:
        for name in names:
            g = np.asarray(grads["layers"][net][name])
            for l in range(L):  # every layer's memory net gets a gradient (no layer is skipped)
                assert np.abs(g[l]).max() > 1e-8, (net, name, l)
    # padding rows of the vocabulary never receive gradient through the LM head
    assert np.all(np.asarray(grads["lm_head"])[:, REAL:] == 0)
    # placeholders are overwritten in the input of every layer, layer 0 included (§1.3 step 1):
    # the placeholder's embedding row is never used; beacon rows are (they are real inputs)
    g_embed = np.asarray(grads["embed"])
    assert np.all(g_embed[PH] == 0)
    assert all(np.abs(g_embed[t]).max() > 1e-8 for t in [TB] + GB)
    # finite-difference check along one random direction in the memory params
    rng = np.random.default_rng(6)
    mem = {"global_mem": params["layers"]["global_mem"], "temp_mem": params["layers"]["temp_mem"]}
    direction = jax.tree_util.tree_map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), mem)
    shift = lambda eps: dict(params, layers=dict(params["layers"], **jax.tree_util.tree_map(
        lambda a, d: a + eps * d, mem, direction)))
    eps = 1e-2
    fd = (float(loss_fn(shift(eps))) - float(loss_fn(shift(-eps)))) / (2 * eps)
    an = sum(float(jnp.vdot(grads["layers"][k][n], direction[k][n])) for k in direction for n in direction[k])
    np.testing.assert_allclose(fd, an, rtol=2e-2, atol=1e-4)
