"""A slow, obviously-correct CoMeT oracle, written straight from docs/design.md §1.2-1.3.

Independent of `comet_jax` on purpose: nothing here is shared with the library, so a
bug there cannot hide behind the same bug here. Everything is float32 `jax.numpy`
(so `jax.grad` works) with plain Python loops over sequences, chunks and layers.
Chunks have VARIABLE length and are built token by token: no static slots, no padding,
no masks beyond the causal one, no `lax.scan`.

Parameter layout (linear weights stored (in, out), so y = x @ W):

    params = {"embed": (V, D), "final_norm": (D,), "lm_head": (D, V) [untied only],
              "layers": {  # every leaf stacked on a leading layer axis L
                  "attn_norm", "mlp_norm": (L, D), "wq": (L, D, H*hd), "wk"/"wv": (L, D, K*hd),
                  "wo": (L, H*hd, D), "q_norm"/"k_norm": (L, hd) [qk_norm only],
                  "w_gate"/"w_up": (L, D, F), "w_down": (L, F, D),
                  "global_mem": {"norm": (L, D), "gate": (L, 2D), "down": (L, D, 8), "up": (L, 8, D)} [G > 0],
                  "temp_mem": {"norm": (L, D), "down": (L, D, 8), "up": (L, 8, D)} [stride > 0]}}

cfg:   hidden_size, num_heads, num_kv_heads, head_dim, rms_eps, qk_norm, tie_embeddings,
       inv_freq (numpy (hd/2,)), num_real_tokens.
comet: chunk_size, global_size, stride, budget, placeholder_id, temp_beacon_id, global_beacon_ids.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# §1.3 step 3: the global net's RMSNorm uses the machine epsilon of the compute dtype
# (PyTorch nn.RMSNorm's default eps=None); we compute in float32.
GLOBAL_NORM_EPS = float(np.finfo(np.float32).eps)  # 1.1920929e-07
# §1.3 step 4: the temp net's RMSNorm has an explicit eps of 1e-12.
TEMP_NORM_EPS = 1e-12
# Compute dtype. A float64 check (tests/x64_check.py) sets this and GLOBAL_NORM_EPS
# before anything is traced.
DTYPE = jnp.float32


# ----------------------------------------------------------------------------- speed only
# Op-by-op JAX compiles every primitive anew for every distinct chunk length, which makes a
# plain eager oracle very slow. We therefore jit a few natural blocks (one decoder layer, the
# memory nets, the LM head + CE), each with its config dict as a *static* argument, so their
# compilations are shared across chunks, layers, sequences and calls. jit never changes what
# is computed; `with jax.disable_jit():` runs everything op by op. jax.grad (and an outer
# jax.jit) work through these blocks.


def _freeze(x):
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, (list, tuple)):
        return tuple(_freeze(v) for v in x)
    if hasattr(x, "shape"):  # numpy / jax arrays (e.g. inv_freq)
        x = np.asarray(x)
        return (x.dtype.str, x.shape, x.tobytes())
    return x


class _Static:
    """A hashable, read-only view of a config dict (for jit's static arguments)."""

    def __init__(self, d):
        self.d = d
        self.key = _freeze(d)

    def __getitem__(self, k):
        return self.d[k]

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Static) and self.key == other.key


def _head_params(params):
    """The parameters the LM head needs (so the jitted head does not take every layer)."""
    return {k: params[k] for k in ("embed", "final_norm", "lm_head") if k in params}


# ----------------------------------------------------------------------------- backbone


def rms_norm(x, weight, eps):
    """x * rsqrt(mean(x^2) + eps) * weight over the last axis, in float32."""
    x = x.astype(DTYPE)
    return x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def rope_cos_sin(cfg, n):
    """HF default-rope convention: angles = pos * inv_freq, cos/sin over cat(freqs, freqs)."""
    pos = jnp.arange(n, dtype=DTYPE)
    freqs = pos[:, None] * jnp.asarray(cfg["inv_freq"], DTYPE)[None, :]
    emb = jnp.concatenate([freqs, freqs], axis=-1)  # (n, hd)
    return jnp.cos(emb), jnp.sin(emb)


def layer_params(params, l):
    """Slice layer l out of the stacked per-layer parameters."""
    return jax.tree_util.tree_map(lambda a: a[l], params["layers"])


def attention(lp, cfg, x, cos, sin):
    """Causal GQA self-attention over one sequence x: (n, D). Positions 0..n-1."""
    n = x.shape[0]
    H, K, hd = cfg["num_heads"], cfg["num_kv_heads"], cfg["head_dim"]
    q = (x @ lp["wq"]).reshape(n, H, hd)
    k = (x @ lp["wk"]).reshape(n, K, hd)
    v = (x @ lp["wv"]).reshape(n, K, hd)
    if cfg["qk_norm"]:  # Qwen3: per-head RMSNorm over head_dim, before RoPE
        q = rms_norm(q, lp["q_norm"], cfg["rms_eps"])
        k = rms_norm(k, lp["k_norm"], cfg["rms_eps"])
    q = q * cos[:, None, :] + rotate_half(q) * sin[:, None, :]
    k = k * cos[:, None, :] + rotate_half(k) * sin[:, None, :]
    # GQA like HF repeat_kv: query head h reads kv head h // (H // K).
    rep = H // K
    k = jnp.repeat(k, rep, axis=1)
    v = jnp.repeat(v, rep, axis=1)
    scores = jnp.einsum("qhd,khd->hqk", q, k) * (hd ** -0.5)
    causal = np.tril(np.ones((n, n), dtype=bool))
    scores = jnp.where(causal[None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.einsum("hqk,khd->qhd", probs, v).reshape(n, H * hd)
    return out @ lp["wo"]


def decoder_layer(lp, cfg, h, cos, sin):
    """Pre-norm Llama/Qwen3 block: h += attn(norm(h)); h += mlp(norm(h))."""
    h = h + attention(lp, cfg, rms_norm(h, lp["attn_norm"], cfg["rms_eps"]), cos, sin)
    x = rms_norm(h, lp["mlp_norm"], cfg["rms_eps"])
    return h + (jax.nn.silu(x @ lp["w_gate"]) * (x @ lp["w_up"])) @ lp["w_down"]


_jit_layer = jax.jit(decoder_layer, static_argnums=1)


def lm_logits(params, cfg, h):
    """Final norm + LM head; vocabulary rows >= num_real_tokens get -inf (§1.4)."""
    h = rms_norm(h, params["final_norm"], cfg["rms_eps"])
    head = params["embed"].T if cfg["tie_embeddings"] else params["lm_head"]
    logits = h @ head
    real = np.arange(logits.shape[-1]) < cfg["num_real_tokens"]
    return jnp.where(real, logits, -jnp.inf)


_jit_logits = jax.jit(lm_logits, static_argnums=1)


def num_layers(params):
    return params["layers"]["wq"].shape[0]


def reference_full_logits(params, cfg, tokens):
    """Plain causal backbone over the whole sequence (no memory, positions 0..n-1): (n, V)."""
    h = jnp.asarray(params["embed"])[np.asarray([int(t) for t in tokens])]
    cos, sin = rope_cos_sin(cfg, len(tokens))
    for l in range(num_layers(params)):
        h = _jit_layer(layer_params(params, l), _Static(cfg), h, cos, sin)
    return _jit_logits(_head_params(params), _Static(cfg), h)


def cross_entropy(logits, labels):
    """Per-row -log softmax(logits)[label]."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -logp[np.arange(len(labels)), np.asarray(labels)]


# ----------------------------------------------------------------------------- layout (§1.2)


def build_chunk(comet, text, chunk_index, beacons_before):
    """Lay out chunk `chunk_index` token by token (docs/design.md §1.2 step 3).

    text: this chunk's raw text token ids; beacons_before: temp beacons produced by all
    earlier chunks. Returns a dict with the token ids and the positions of every kind of
    slot (positions are indices into `tokens`; also the position ids, §1.2 step 4).
    """
    G, stride, budget = comet["global_size"], comet["stride"], comet["budget"]
    out = {"tokens": [], "global_ph": [], "temp_ph": [], "text": [], "temp_beacon": [], "global_beacon": []}

    def put(kind, tok):
        out[kind].append(len(out["tokens"]))
        out["tokens"].append(int(tok))

    if chunk_index > 0:  # G global-memory placeholders, only after the first chunk
        for _ in range(G):
            put("global_ph", comet["placeholder_id"])
    m = min(budget, beacons_before) if stride > 0 else 0  # m_i temp-memory placeholders
    for _ in range(m):
        put("temp_ph", comet["placeholder_id"])
    for j, tok in enumerate(text):
        put("text", tok)
        # a temp beacon after every `stride` text tokens, and after a final partial group
        if stride > 0 and ((j + 1) % stride == 0 or j == len(text) - 1):
            put("temp_beacon", comet["temp_beacon_id"])
    assert len(comet["global_beacon_ids"]) == G, comet["global_beacon_ids"]
    for gid in comet["global_beacon_ids"]:  # the G global beacons, in order, in every chunk
        put("global_beacon", gid)
    assert len(out["temp_beacon"]) == (-(-len(text) // stride) if stride > 0 else 0)
    return out


# ----------------------------------------------------------------------------- memory nets (§1.3)


def global_memory_update(gp, x, s_prev):
    """§1.3 step 3. x: layer output at the G global beacons. Returns (o, s)."""
    x_hat = rms_norm(x, gp["norm"], GLOBAL_NORM_EPS)
    if s_prev is None:  # first chunk
        s = x_hat
    else:  # one scalar gate per slot from [x_hat ; s_prev] (this input order, §1.8 g_proj)
        g = jax.nn.sigmoid(jnp.concatenate([x_hat, s_prev], axis=-1) @ gp["gate"])[:, None]
        s = g * s_prev + (1.0 - g) * x_hat
    o = s + (s @ gp["down"]) @ gp["up"]
    return o, s


def temp_memory_entries(tp, y):
    """§1.3 step 4. y: layer output at this chunk's temp beacons. Returns p, one entry per beacon."""
    y_hat = rms_norm(y, tp["norm"], TEMP_NORM_EPS)
    return y_hat + (y_hat @ tp["down"]) @ tp["up"]


_jit_global = jax.jit(global_memory_update)
_jit_temp = jax.jit(temp_memory_entries)


# ----------------------------------------------------------------------------- CoMeT forward


def _check_plan(comet, tokens, plan):
    assert sum(plan) == len(tokens), (plan, len(tokens))
    assert all(1 <= c <= comet["chunk_size"] for c in plan), plan


def comet_layer_step(lp, cfg, comet, lay, h, glob_o, glob_s, queue):
    """Layer l over chunk i (§1.3), with layer l's memories from chunk i-1.

    lay: the chunk's layout positions (build_chunk). glob_o, glob_s: (G, D) or None before the
    first chunk. queue: (q, D) temp FIFO, oldest first. Returns h' and the new memories.
    """
    G, stride, budget = comet["global_size"], comet["stride"], comet["budget"]
    # §1.3 step 1: overwrite the placeholders in this layer's INPUT.
    if lay["global_ph"]:
        h = h.at[np.asarray(lay["global_ph"])].set(glob_o)  # slot j gets o[j]
    if lay["temp_ph"]:
        assert queue.shape[0] == len(lay["temp_ph"])
        h = h.at[np.asarray(lay["temp_ph"])].set(queue)  # oldest entry first
    # §1.3 step 2: the unchanged backbone layer; causal inside the chunk only,
    # positions 0..len(chunk)-1 (§1.2 step 4).
    cos, sin = rope_cos_sin(cfg, h.shape[0])
    h = _jit_layer(lp, _Static(cfg), h, cos, sin)
    # §1.3 steps 3-4: memories read from this layer's OUTPUT.
    if G > 0:
        glob_o, glob_s = _jit_global(lp["global_mem"], h[np.asarray(lay["global_beacon"])], glob_s)
    if stride > 0:
        p = _jit_temp(lp["temp_mem"], h[np.asarray(lay["temp_beacon"])])
        q = jnp.concatenate([queue, p], axis=0)
        queue = q[max(0, q.shape[0] - budget):]  # newest `budget` entries, age order kept
    return h, glob_o, glob_s, queue


def text_losses(head_params, cfg, h_text, labels, has_label):
    """CE of the labels at the text positions (final norm + LM head); 0 where unlabeled."""
    logits = lm_logits(head_params, cfg, h_text)
    logp = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(logp, labels[:, None], axis=-1)[:, 0]
    return jnp.where(has_label, nll, 0.0)


_jit_text_losses = jax.jit(text_losses, static_argnums=1)


def reference_per_token_losses(params, cfg, comet, tokens, plan):
    """One sequence. Returns (n,) float32: CE of predicting tokens[k+1] at raw position k; 0 at k = n-1."""
    tokens = [int(t) for t in tokens]
    plan = [int(c) for c in plan]
    _check_plan(comet, tokens, plan)
    L, D = num_layers(params), cfg["hidden_size"]
    scfg = _Static(cfg)
    # §1.2 step 1: labels on the raw sequence before chunking; the last token is unlabeled.
    labels = tokens[1:] + [None]
    embed = jnp.asarray(params["embed"])

    # Per-layer memories carried from chunk to chunk (§1.3 step 5: layers never share).
    glob_o = [None] * L  # global memory o, (G, D)
    glob_s = [None] * L  # global state s, (G, D)
    queue = [jnp.zeros((0, D), DTYPE) for _ in range(L)]  # temp FIFO, oldest first
    beacons_so_far = 0
    losses = []
    start = 0
    for i, length in enumerate(plan):
        lay = build_chunk(comet, tokens[start:start + length], i, beacons_so_far)
        h = embed[np.asarray(lay["tokens"])]
        for l in range(L):
            h, glob_o[l], glob_s[l], queue[l] = comet_layer_step(
                layer_params(params, l), cfg, comet, lay, h, glob_o[l], glob_s[l], queue[l])
        beacons_so_far += len(lay["temp_beacon"])
        # Logits at the text positions (in raw order) only.
        chunk_labels = labels[start:start + length]
        has = np.array([lab is not None for lab in chunk_labels])
        safe = np.array([0 if lab is None else lab for lab in chunk_labels], np.int32)
        losses.append(_jit_text_losses(_head_params(params), scfg, h[np.asarray(lay["text"])], safe, has))
        start += length
    return jnp.concatenate(losses).astype(DTYPE)


def reference_loss(params, cfg, comet, batch_tokens, batch_plans):
    """Sum of all labeled per-token losses / number of labeled tokens (sum of n_i - 1)."""
    assert len(batch_tokens) == len(batch_plans)
    total = 0.0
    count = 0
    for tokens, plan in zip(batch_tokens, batch_plans):
        total = total + jnp.sum(reference_per_token_losses(params, cfg, comet, tokens, plan))
        count += len(tokens) - 1
    return total / count
