"""Llama / Qwen3 decoder as pure functions over a parameter pytree.

Parameters (linear weights stored (in, out), so y = x @ W; layer leaves stacked on a
leading axis L and scanned):

    embed (V, D), final_norm (D,), lm_head (D, V) unless tied,
    layers: attn_norm, mlp_norm (L, D); wq (L, D, H*hd); wk, wv (L, D, K*hd);
            wo (L, H*hd, D); q_norm, k_norm (L, hd) with qk_norm;
            w_gate, w_up (L, D, F); w_down (L, F, D)

Attention takes explicit position ids and an explicit boolean mask, because CoMeT
restarts positions in every chunk and masks unused slots.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax.config import ModelConfig
from comet_jax.loss import token_nll
from comet_jax.model import attention
from comet_jax.model.remat import checkpointed
from comet_jax.model.rope import apply_rope, inv_frequencies
from comet_jax.parallel import sharding

Params = dict[str, Any]
# the logical axes of the hidden states between layers, [B, T, D]: batch over data x fsdp
ACTIVATION = ("batch", None, "activation_embed")
# A large negative instead of -inf: a query whose keys are all masked (a padding slot)
# gets a uniform softmax rather than NaNs that would poison gradients.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def rms_norm(x: jnp.ndarray, weight: jnp.ndarray, eps: float) -> jnp.ndarray:
    """HF's LlamaRMSNorm: normalise in float32, cast back, then scale."""
    xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
    return weight.astype(x.dtype) * y.astype(x.dtype)


def cast_params(params: Params, dtype: str) -> Params:
    dt = jnp.dtype(dtype)
    return jax.tree.map(lambda a: a.astype(dt) if jnp.issubdtype(a.dtype, jnp.floating) else a, params)


def project_qkv(p: Params, x: jnp.ndarray, positions: jnp.ndarray, cfg: ModelConfig):
    """q [B, T, H, hd], k and v [B, T, K, hd], RoPE (and Qwen3 q/k norm) applied."""
    b, t, _ = x.shape
    q = (x @ p["wq"]).reshape(b, t, cfg.num_heads, cfg.head_dim)
    k = (x @ p["wk"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    v = (x @ p["wv"]).reshape(b, t, cfg.num_kv_heads, cfg.head_dim)
    if cfg.qk_norm:
        q = rms_norm(q, p["q_norm"], cfg.rms_eps)
        k = rms_norm(k, p["k_norm"], cfg.rms_eps)
    inv_freq = inv_frequencies(cfg.rope, cfg.head_dim)
    return apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq), v


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Grouped-query attention. q [B, T, H, hd]; k, v [B, S, K, hd]; mask [B, T, S] bool
    (True = may attend). Returns [B, T, H*hd]."""
    b, t, h, hd = q.shape
    kv = k.shape[2]
    qg = q.reshape(b, t, kv, h // kv, hd)
    scores = jnp.einsum("btkgd,bskd->bkgts", qg, k, preferred_element_type=jnp.promote_types(q.dtype, jnp.float32))
    scores = scores * (hd ** -0.5)
    scores = jnp.where(mask[:, None, None, :, :], scores, MASK_VALUE)
    probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, v)
    return out.reshape(b, t, h * hd)


def causal_attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, lengths: jnp.ndarray,
                  block: int = 128) -> jnp.ndarray:
    """`attend` with a causal mask (keys past `lengths` masked), one block of `block` queries
    at a time over only the keys up to the block's end: the masked upper triangle of blocks
    is never computed (at 512 tokens in blocks of 128, 10 of 16 blocks). Same result as
    attend(q, k, v, causal_mask(lengths, T)): a masked key adds exactly 0 to a softmax."""
    t = q.shape[1]
    outs = []
    for start in range(0, t, block):
        end = min(start + block, t)
        rows = jnp.arange(start, end)[:, None]
        cols = jnp.arange(end)[None, :]
        mask = (rows >= cols)[None] & (cols < lengths[:, None, None])
        outs.append(attend(q[:, start:end], k[:, :end], v[:, :end], mask))
    return jnp.concatenate(outs, axis=1)


def mlp(p: Params, x: jnp.ndarray) -> jnp.ndarray:
    return (jax.nn.silu(x @ p["w_gate"]) * (x @ p["w_up"])) @ p["w_down"]


def decoder_layer_kv(p: Params, h: jnp.ndarray, positions: jnp.ndarray, mask: jnp.ndarray | None,
                     cfg: ModelConfig, keys=None, attn=None) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """One pre-norm decoder block over h [B, T, D]; also returns the keys and values it attended.

    keys: optional function (k, v) -> (k_all, v_all) that writes this block's new keys and
    values [B, T, K, hd] into a cache and returns the cache [B, S, K, hd] to attend over
    (mask is then [B, T, S]). Without it the block attends over its own T tokens.
    attn: optional function (q, k, v) -> [B, T, H*hd] used instead of attend(q, k, v, mask)
    (e.g. causal_attend; mask is then unused)."""
    h = sharding.constrain(h, ACTIVATION)
    x = rms_norm(h, p["attn_norm"], cfg.rms_eps)
    q, k, v = project_qkv(p, x, positions, cfg)
    if keys is not None:
        k, v = keys(k, v)
    out = attn(q, k, v) if attn is not None else attend(q, k, v, mask)
    h = h + out @ p["wo"]
    x = rms_norm(h, p["mlp_norm"], cfg.rms_eps)
    return sharding.constrain(h + mlp(p, x), ACTIVATION), k, v


def decoder_layer(p: Params, h: jnp.ndarray, positions: jnp.ndarray, mask: jnp.ndarray | None,
                  cfg: ModelConfig, attn=None) -> jnp.ndarray:
    """One pre-norm decoder block over h [B, T, D]."""
    return decoder_layer_kv(p, h, positions, mask, cfg, attn=attn)[0]


def run_layers(layers: Params, h: jnp.ndarray, positions: jnp.ndarray, mask: jnp.ndarray | None,
               cfg: ModelConfig, remat: bool | str = False, attn=None) -> jnp.ndarray:
    """All decoder layers, scanned over the stacked leading axis."""

    def body(h, p):
        return decoder_layer(p, h, positions, mask, cfg, attn=attn), None

    h, _ = jax.lax.scan(checkpointed(body, remat), h, layers)
    return h


def embed(params: Params, tokens: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    return jnp.take(params["embed"], tokens, axis=0).astype(jnp.dtype(cfg.dtype))


def lm_head_weight(params: Params) -> jnp.ndarray:
    """(D, V): the untied head, or the embedding transposed when tied."""
    return params["lm_head"] if "lm_head" in params else params["embed"].T


def final_norm(params: Params, h: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    return rms_norm(h, params["final_norm"], cfg.rms_eps)


def mask_padded_vocab(logits: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    """Rows the converter added only to round the vocabulary up never win a softmax."""
    if cfg.real_vocab == logits.shape[-1]:
        return logits
    live = jnp.arange(logits.shape[-1]) < cfg.real_vocab
    return jnp.where(live, logits, -jnp.inf)


def causal_mask(lengths: jnp.ndarray, t: int) -> jnp.ndarray:
    """[B, T, T]: causal, and keys past each sequence's length masked."""
    idx = jnp.arange(t)
    causal = idx[None, :, None] >= idx[None, None, :]
    valid = idx[None, None, :] < lengths[:, None, None]
    return causal & valid


def full_hidden(params: Params, tokens: jnp.ndarray, lengths: jnp.ndarray, cfg: ModelConfig,
                remat: bool | str = False, block: int = 128) -> jnp.ndarray:
    """The plain backbone over whole (right-padded) sequences: final-normed hidden [B, T, D].
    Attention runs through the model's attention kernel, or with xla in causal blocks of
    `block` queries (causal_attend)."""
    params = cast_params(params, cfg.dtype)
    b, t = tokens.shape
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    h = embed(params, tokens, cfg)
    attn = (attention.full_attention(cfg, lengths)
            or functools.partial(causal_attend, lengths=lengths, block=block))
    h = run_layers(params["layers"], h, positions, None, cfg, remat=remat, attn=attn)
    return final_norm(params, h, cfg)


def head_logits(params: Params, h: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    """Logits [..., V] (at least float32) of final-normed hidden states h [..., D]; padded
    vocabulary rows masked."""
    logits = jnp.einsum("...d,dv->...v", h, lm_head_weight(params),
                        preferred_element_type=jnp.promote_types(h.dtype, jnp.float32))
    return mask_padded_vocab(logits, cfg)


def full_logits(params: Params, tokens: jnp.ndarray, lengths: jnp.ndarray, cfg: ModelConfig) -> jnp.ndarray:
    """[B, T, V] logits of the plain backbone (for tests and short inputs only)."""
    h = full_hidden(params, tokens, lengths, cfg)
    return head_logits(cast_params(params, cfg.dtype), h, cfg)


def full_token_losses(params: Params, tokens: jnp.ndarray, lengths: jnp.ndarray, labels: jnp.ndarray,
                      cfg: ModelConfig, remat: bool | str = False) -> jnp.ndarray:
    """Per-token loss [B, T] of the plain backbone (blockwise, 0 where labels == IGNORE)."""
    p = cast_params(params, cfg.dtype)
    h = full_hidden(p, tokens, lengths, cfg, remat=remat)
    return token_nll(h, lm_head_weight(p), labels, cfg.real_vocab)
