"""Generation on device (docs/design.md §1.5): pure functions over a decode state.

CoMeT mode. Closed chunks are laid out exactly as in training and run through the
chunk-major forward keeping only the per-layer memories (`prefill_closed`, a scan over a
fixed-size block of chunks: the number of blocks is a host loop bound, never a shape). The
last chunk is open: it uses the same static slots as a training chunk, its keys and values
sit in a KV cache of S slots, no global beacons are fed and a temp beacon is fed only after
a complete group of `stride` text tokens. Feeding a token (`comet_feed`) writes it, and the
temp beacon that may follow it, into the cache. When the open chunk is full, the next token
first closes it: the chunk is re-run as a closed training chunk (beacons included) to update
the memories, and a new open chunk is started from its placeholders. State is
O(layers x (S x kv + (2G + budget) x D)) whatever the length.

The open chunk's slots are filled in the order tokens are fed (each new token right after the
last valid slot; `cache["tokens"]` keeps the id in every slot). With `official` (docs/design.md
§1.7) chunks are laid out as the official generation code does, and while decoding a temp
beacon follows a text token when the official decoder's counter (`official_count`: the open
chunk's valid placeholders plus its text tokens) is a multiple of the stride, also right after
the prompt; such a beacon may sit where the static layout has a text slot.

Full mode (the baseline): one KV cache over the whole prompt and its continuation, filled
in one causal pass (`full_prefill`), and extended one token at a time (`full_feed`, always xla).

Both modes share `extend`: run new tokens through every layer against a cache.
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.layout import Slots
from comet_jax.model import attention, backbone
from comet_jax.model.comet import chunk_inputs, chunk_layers

State = dict


def _rows(b: int) -> jnp.ndarray:
    return jnp.arange(b)[:, None]


def logits_of(params: dict, h: jnp.ndarray, model: ModelConfig) -> jnp.ndarray:
    """Next-token logits of last-layer hidden states h [..., D] (final norm, then the head)."""
    return backbone.head_logits(params, backbone.final_norm(params, h, model), model)


def extend(params: dict, cache: State, tokens: jnp.ndarray, slots: jnp.ndarray, valid: jnp.ndarray,
           positions: jnp.ndarray, model: ModelConfig) -> tuple[jnp.ndarray, State]:
    """Run tokens [B, T] (at cache slots [B, T], with position ids and validity) through
    every layer. Each attends causally (by slot) to the valid slots of the cache, its own
    keys and values included; invalid tokens write nothing. Returns (last-layer hidden [B, T, D], updated cache)."""
    b, size = cache["valid"].shape
    rows = _rows(b)
    slots = jnp.where(valid, slots, size)  # writes of invalid tokens are dropped
    cvalid = cache["valid"].at[rows, slots].set(True, mode="drop")
    key_slot = jnp.arange(size)
    mask = cvalid[:, None, :] & (key_slot[None, None, :] <= slots[:, :, None])
    h = backbone.embed(params, tokens, model)

    def layer(carry, p):
        h, ks, vs, i = carry
        box = {}

        def write(k, v):
            box["k"] = ks.at[i, rows, slots].set(k.astype(ks.dtype), mode="drop")
            box["v"] = vs.at[i, rows, slots].set(v.astype(vs.dtype), mode="drop")
            return box["k"][i], box["v"][i]

        h, _, _ = backbone.decoder_layer_kv(p, h, positions, mask, model, keys=write)
        return (h, box["k"], box["v"], i + 1), None

    (h, ks, vs, _), _ = jax.lax.scan(layer, (h, cache["k"], cache["v"], 0), params["layers"])
    return h, {"k": ks, "v": vs, "valid": cvalid}


# ----------------------------------------------------------------------------- CoMeT mode

def chunk_layout(text: jnp.ndarray, n_text: jnp.ndarray, first: jnp.ndarray, q_valid, closed, live,
                 comet: CometConfig, official: bool = False) -> dict[str, jnp.ndarray]:
    """tokens, valid, positions [B, S] of one chunk holding text[:, :n_text] (text [B, C]).

    closed: the chunk ends with its global beacons and a temp beacon after a final partial
    group (training layout); open: neither. official: the official generation code's layout
    (docs/design.md §1.7): no temp beacon after the final group of any chunk, complete or
    partial, open or closed; an open chunk with text also gets the beacon the official decoder
    inserts right after the prompt (when `official_count` is a multiple of the stride), in the
    slot after its last text token. Rows that are not live are fully masked (they leave the
    memories untouched)."""
    sl = Slots.of(comet)
    b = text.shape[0]
    closed = jnp.broadcast_to(jnp.asarray(closed), (b,))
    tokens = jnp.zeros((b, sl.size), jnp.int32)
    valid = jnp.zeros((b, sl.size), bool)
    g, k = sl.global_size, sl.budget
    if g:
        tokens = tokens.at[:, :g].set(comet.placeholder_id)
        valid = valid.at[:, :g].set(~first[:, None])
    if k:
        tokens = tokens.at[:, g:g + k].set(comet.placeholder_id)
        valid = valid.at[:, g:g + k].set(q_valid)
    ts = sl.text_slots
    tokens = tokens.at[:, ts].set(text)
    valid = valid.at[:, ts].set(jnp.arange(sl.chunk_size)[None] < n_text[:, None])
    if sl.num_beacons:
        if official:
            nb = jnp.maximum(n_text - 1, 0) // sl.stride  # every group but the last one
        else:
            nb = jnp.where(closed, -(-n_text // sl.stride), n_text // sl.stride)
        bs = sl.beacon_slots
        tokens = tokens.at[:, bs].set(comet.temp_beacon_id)
        valid = valid.at[:, bs].set(jnp.arange(sl.num_beacons)[None] < nb[:, None])
        if official:  # the beacon the official decoder inserts right after the prompt
            after = ~closed & (n_text > 0) & (official_count(first, q_valid, n_text, comet) % sl.stride == 0)
            # the slot after the last text token: a beacon slot, or the next text slot, never valid here
            slot = jnp.asarray(sl.text_slots)[jnp.maximum(n_text - 1, 0)] + 1
            rows = jnp.arange(b)
            tokens = tokens.at[rows, slot].set(jnp.where(after, comet.temp_beacon_id, tokens[rows, slot]))
            valid = valid.at[rows, slot].set(valid[rows, slot] | after)
    if g:
        tokens = tokens.at[:, sl.beacons_start:].set(jnp.asarray(comet.global_beacon_ids, jnp.int32))
        valid = valid.at[:, sl.beacons_start:].set(closed[:, None])
    valid = valid & live[:, None]
    positions = jnp.where(valid, jnp.cumsum(valid, axis=1) - 1, 0).astype(jnp.int32)
    return {"tokens": tokens, "valid": valid, "positions": positions}


def official_count(first: jnp.ndarray, q_valid: jnp.ndarray, n_text: jnp.ndarray, comet: CometConfig) -> jnp.ndarray:
    """The official decoder's beacon counter (`last_chunk_text_length`, docs/design.md §1.7) of
    an open chunk holding n_text text tokens: its memory placeholders (G global ones unless the
    chunk is the first, plus the valid temp ones) and its text; its temp beacons are not
    counted. A temp beacon follows a text token (or the prompt) when this is a multiple of
    the stride."""
    g = jnp.where(first, 0, comet.global_size)
    return (g + jnp.sum(q_valid, axis=1) + n_text).astype(jnp.int32)


def _q_valid(mems: State, b: int, comet: CometConfig):
    return mems["q_valid"][0] if comet.has_temp else jnp.zeros((b, 0), bool)


def chunk_forward(params: dict, mems: State, lay: dict, first: jnp.ndarray, live: jnp.ndarray,
                  model: ModelConfig, comet: CometConfig, with_kv: bool = False):
    """One laid-out chunk through every layer: (last hidden [B, S, D], memories, kv or None)."""
    inputs = chunk_inputs({**lay, "first": first, "live": live})
    return chunk_layers(params, mems, lay["tokens"], inputs, model, comet, with_kv)


def _select(mask: jnp.ndarray, new, old, axis: int):
    """Per-row choice between two pytrees whose batch axis is `axis`."""
    def pick(n, o):
        m = mask.reshape((1,) * axis + (-1,) + (1,) * (n.ndim - axis - 1))
        return jnp.where(m, n, o)
    return jax.tree.map(pick, new, old)


@partial(jax.jit, static_argnames=("model", "comet", "official"), donate_argnames=("mems",))
def prefill_closed(params: dict, mems: State, text: jnp.ndarray, start: jnp.ndarray, n_closed: jnp.ndarray,
                   model: ModelConfig, comet: CometConfig, official: bool = False) -> State:
    """Run closed chunks start, start+1, ... (text [K, B, C]) and keep only the memories;
    chunk start+j of row b is live when start+j < n_closed[b]."""
    b = text.shape[1]

    def step(mems, xs):
        j, txt = xs
        i = start + j
        live = i < n_closed
        first = jnp.broadcast_to(i == 0, (b,))
        n = jnp.full((b,), comet.chunk_size, jnp.int32)
        lay = chunk_layout(txt, n, first, _q_valid(mems, b, comet), True, live, comet, official)
        _, mems, _ = chunk_forward(params, mems, lay, first, live, model, comet)
        return mems, None

    mems, _ = jax.lax.scan(step, mems, (jnp.arange(text.shape[0]), text))
    return mems


def _open(params, mems, text, n_text, first, live, model, comet, official):
    """Start an open chunk holding text[:, :n_text]: (cache, last hidden [B, S, D])."""
    b = text.shape[0]
    lay = chunk_layout(text, n_text, first, _q_valid(mems, b, comet), False, live, comet, official)
    h, _, (ks, vs) = chunk_forward(params, mems, lay, first, live, model, comet, with_kv=True)
    return {"k": ks, "v": vs, "valid": lay["valid"], "tokens": lay["tokens"]}, h


@partial(jax.jit, static_argnames=("model", "comet", "official"))
def open_prompt(params: dict, mems: State, text: jnp.ndarray, n_text: jnp.ndarray, first: jnp.ndarray,
                model: ModelConfig, comet: CometConfig, official: bool = False) -> tuple[State, jnp.ndarray]:
    """The open last chunk of the prompts (text [B, C], 1 <= n_text <= C): the decode state
    and the logits [B, V] of the next token."""
    cache, h = _open(params, mems, text, n_text, first, n_text > 0, model, comet, official)
    idx = jnp.asarray(Slots.of(comet).text_slots)[jnp.maximum(n_text - 1, 0)]
    logits = logits_of(params, h[jnp.arange(text.shape[0]), idx], model)
    state = {"mems": mems, "cache": cache, "text": text, "n_text": n_text, "first": first}
    return state, logits


def _roll(params, s: State, full: jnp.ndarray, model, comet, official) -> State:
    """Close the full open chunks of rows `full` (update their memories) and open empty ones."""
    b = s["text"].shape[0]
    lay = chunk_layout(s["text"], s["n_text"], s["first"], _q_valid(s["mems"], b, comet), True, full, comet,
                       official)
    _, mems, _ = chunk_forward(params, s["mems"], lay, s["first"], full, model, comet)
    mems = _select(full, mems, s["mems"], axis=1)
    first = s["first"] & ~full
    zero = jnp.zeros_like(s["n_text"])
    cache, _ = _open(params, mems, s["text"], zero, first, full, model, comet, official)
    cache = {"k": _select(full, cache["k"], s["cache"]["k"], axis=1),
             "v": _select(full, cache["v"], s["cache"]["v"], axis=1),
             "valid": _select(full, cache["valid"], s["cache"]["valid"], axis=0),
             "tokens": _select(full, cache["tokens"], s["cache"]["tokens"], axis=0)}
    return {**s, "mems": mems, "cache": cache, "first": first, "n_text": jnp.where(full, 0, s["n_text"])}


def comet_feed(params: dict, s: State, token: jnp.ndarray, active: jnp.ndarray, model: ModelConfig,
               comet: CometConfig, official: bool = False) -> tuple[State, jnp.ndarray]:
    """Feed one text token per row (rows not `active` are left as they are): returns the new
    state and the next-token logits [B, V]. A temp beacon follows when the token completes a
    group of `stride` (official: when `official_count` becomes a multiple of `stride`); it is
    fed, never emitted. Both go into the slots right after the last valid one, at the next
    positions."""
    sl = Slots.of(comet)
    full = active & (s["n_text"] >= comet.chunk_size)
    s = jax.lax.cond(jnp.any(full), lambda s: _roll(params, s, full, model, comet, official), lambda s: s, s)
    rows = jnp.arange(token.shape[0])
    n = s["n_text"]
    k = jnp.minimum(n, comet.chunk_size - 1)  # inactive rows may sit on a full chunk
    cvalid = s["cache"]["valid"]
    # the open chunk fills its slots in the order tokens are fed: the next one goes right
    # after the last valid slot (for our layout that is text slot n_text)
    last = jnp.max(jnp.where(cvalid, jnp.arange(cvalid.shape[1]), -1), axis=1)
    slot = jnp.maximum(last + 1, sl.text_start).astype(jnp.int32)
    pos = jnp.sum(cvalid, axis=1).astype(jnp.int32)
    if sl.num_beacons:
        count = official_count(s["first"], _q_valid(s["mems"], token.shape[0], comet), n + 1, comet) if official \
            else n + 1
        beacon = active & (count % sl.stride == 0)
        toks = jnp.stack([token, jnp.full_like(token, comet.temp_beacon_id)], axis=1)
        slots, valid, positions = (jnp.stack([slot, slot + 1], 1), jnp.stack([active, beacon], 1),
                                   jnp.stack([pos, pos + 1], 1))
    else:
        toks, slots, valid, positions = token[:, None], slot[:, None], active[:, None], pos[:, None]
    h, cache = extend(params, s["cache"], toks, slots, valid, positions, model)
    fed = s["cache"]["tokens"].at[_rows(token.shape[0]), jnp.where(valid, slots, sl.size)].set(toks, mode="drop")
    cache = {**cache, "tokens": fed}
    text = s["text"].at[rows, k].set(jnp.where(active, token, s["text"][rows, k]))
    s = {**s, "cache": cache, "text": text, "n_text": n + active.astype(n.dtype)}
    return s, logits_of(params, h[:, 0], model)


# ----------------------------------------------------------------------------- full mode

def empty_cache(batch: int, length: int, model: ModelConfig) -> State:
    shape = (model.num_layers, batch, length, model.num_kv_heads, model.head_dim)
    dt = jnp.dtype(model.dtype)
    return {"k": jnp.zeros(shape, dt), "v": jnp.zeros(shape, dt), "valid": jnp.zeros((batch, length), bool)}


@partial(jax.jit, static_argnames=("model", "block"), donate_argnames=("state",))
def full_prefill(params: dict, state: State, tokens: jnp.ndarray, model: ModelConfig, block: int = 256) -> State:
    """The whole prompt, tokens [B, T] (T <= cache length), in one causal pass: through the
    model's attention kernel, or with xla in blocks of `block` queries that visit only the key
    blocks up to their own (`attention.blockwise_causal`: the causal half of the work, no
    [T, T] scores). Keeps the hidden state of each row's last prompt token."""
    b, t = tokens.shape
    length = state["length"]
    positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
    blk = math.gcd(t, block)
    attn = attention.full_attention(model, length) or (
        lambda q, k, v: attention.blockwise_causal(q, k, v, length, blk))

    def layer(h, p):
        h, k, v = backbone.decoder_layer_kv(p, h, positions, None, model, attn=attn)
        return h, (k, v)

    h, (ks, vs) = jax.lax.scan(layer, backbone.embed(params, tokens, model), params["layers"])
    cache = state["cache"]
    valid = positions < length[:, None]
    keep = valid[None, :, :, None, None]
    cache = {"k": cache["k"].at[:, :, :t].set(jnp.where(keep, ks.astype(cache["k"].dtype), 0)),
             "v": cache["v"].at[:, :, :t].set(jnp.where(keep, vs.astype(cache["v"].dtype), 0)),
             "valid": jnp.arange(cache["valid"].shape[1])[None, :] < length[:, None]}
    last = h[jnp.arange(b), jnp.maximum(length - 1, 0)]
    return {**state, "cache": cache, "last": last}


def full_feed(params: dict, s: State, token: jnp.ndarray, active: jnp.ndarray,
              model: ModelConfig) -> tuple[State, jnp.ndarray]:
    slot = s["length"][:, None]
    h, cache = extend(params, s["cache"], token[:, None], slot, active[:, None], slot, model)
    s = {**s, "cache": cache, "length": s["length"] + active.astype(jnp.int32)}
    return s, logits_of(params, h[:, 0], model)
