"""The CoMeT layer and the schedules that run it over chunks and layers.

`comet_layer(p, h, memory, chunk)` is the unit (docs/design.md §1.3): inject the layer's
memories into its input placeholders, run the unchanged decoder layer, read the new
memories from its output. Schedules are short functions over it:

- `layer_major`: scan over layers, inner scan over chunks (training default);
- `chunk_major`: scan over chunks, inner scan over layers (constant-memory inference:
  only the per-layer memories cross chunk boundaries).

Both take a `ChunkBatch` (comet_jax.layout) as a dict of arrays with leading [N, B].
"""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from comet_jax.config import SCHEDULES, CometConfig, ModelConfig
from comet_jax.layout import Slots
from comet_jax.loss import IGNORE, token_nll
from comet_jax.model import attention, backbone
from comet_jax.model.memory import fifo_push, global_update, temp_entries
from comet_jax.model.remat import checkpointed, split_policy

Memory = dict[str, jnp.ndarray]


def init_memory(batch: int, model: ModelConfig, comet: CometConfig) -> Memory:
    """Empty memories of one layer: global output o and state s [B, G, D]; temp queue q [B, K, D]."""
    d, dt = model.hidden_size, jnp.dtype(model.dtype)
    mem: Memory = {}
    if comet.has_global:
        mem["o"] = jnp.zeros((batch, comet.global_size, d), dt)
        mem["s"] = jnp.zeros((batch, comet.global_size, d), dt)
    if comet.has_temp:
        mem["q"] = jnp.zeros((batch, comet.budget, d), dt)
        mem["q_valid"] = jnp.zeros((batch, comet.budget), bool)
    return mem


def stacked_memory(batch: int, model: ModelConfig, comet: CometConfig) -> Memory:
    """Empty memories of every layer, stacked on a leading layer axis."""
    return jax.tree.map(lambda x: jnp.broadcast_to(x, (model.num_layers, *x.shape)),
                        init_memory(batch, model, comet))


def chunk_mask(valid: jnp.ndarray) -> jnp.ndarray:
    """[B, S, S]: causal over slots, only valid keys; no attention across chunks."""
    idx = jnp.arange(valid.shape[-1])
    return (idx[:, None] >= idx[None, :])[None] & valid[:, None, :]


def comet_layer(p: dict, h: jnp.ndarray, memory: Memory, chunk: dict[str, jnp.ndarray],
                model: ModelConfig, comet: CometConfig) -> tuple[jnp.ndarray, Memory]:
    """One layer over one chunk. h [B, S, D]; chunk holds positions, mask, valid, first, live."""
    h, memory, _ = comet_layer_kv(p, h, memory, chunk, model, comet)
    return h, memory


def comet_layer_kv(p: dict, h: jnp.ndarray, memory: Memory, chunk: dict[str, jnp.ndarray],
                   model: ModelConfig, comet: CometConfig):
    """`comet_layer` that also returns the chunk's keys and values [B, S, K, hd] (the KV
    cache of an open chunk in generation)."""
    slots = Slots.of(comet)
    g, k = slots.global_size, slots.budget
    if g:
        h = h.at[:, :g].set(memory["o"].astype(h.dtype))
    if k:
        h = h.at[:, g:g + k].set(memory["q"].astype(h.dtype))
    # with a kernel the dense chunk["mask"] goes unused, and jit drops it
    attn = attention.chunk_attention(model, chunk["valid"])
    h, keys, values = backbone.decoder_layer_kv(p, h, chunk["positions"], chunk["mask"], model, attn=attn)
    new: Memory = {}
    if g:
        new["o"], new["s"] = global_update(p["global_mem"], h[:, slots.beacons_start:], memory["s"], memory["o"],
                                           chunk["first"], chunk["live"])
    if k:
        beacons = slots.beacon_slots
        entries = temp_entries(p["temp_mem"], h[:, beacons])
        new["q"], new["q_valid"] = fifo_push(memory["q"], memory["q_valid"], entries, chunk["valid"][:, beacons])
    return h, new, (keys, values)


def chunk_inputs(c: dict[str, jnp.ndarray]) -> dict[str, jnp.ndarray]:
    return {"positions": c["positions"], "mask": chunk_mask(c["valid"]), "valid": c["valid"],
            "first": c["first"], "live": c["live"]}


def text_nll(params: dict, h: jnp.ndarray, labels: jnp.ndarray, model: ModelConfig,
              comet: CometConfig) -> jnp.ndarray:
    """Per-token loss [..., C] at the text slots of final hidden states h [..., S, D]."""
    text = h[..., Slots.of(comet).text_slots, :]
    text = backbone.final_norm(params, text, model)
    return token_nll(text, backbone.lm_head_weight(params), labels, model.real_vocab)


def layer_major(params: dict, batch: dict[str, jnp.ndarray], model: ModelConfig, comet: CometConfig,
                remat: bool | str = True) -> jnp.ndarray:
    """Per-token loss [N, B, C]: for each layer (scan), run it over every chunk (scan)."""
    h = layer_major_hidden(params, batch, model, comet, remat)
    return text_nll(params, h, batch["labels"], model, comet)


def layer_major_hidden(params: dict, batch: dict[str, jnp.ndarray], model: ModelConfig, comet: CometConfig,
                       remat: bool | str = True) -> jnp.ndarray:
    """Last layer's hidden states [N, B, S, D] of every slot (before the final norm)."""
    n, b = batch["tokens"].shape[:2]
    h = backbone.embed(params, batch["tokens"], model)  # [N, B, S, D]
    chunks = {key: batch[key] for key in ("positions", "valid", "first", "live")}

    outer, inner = split_policy(remat)

    def layer_step(h_all, p):
        def chunk_step(mem, xs):
            h_c, c = xs
            h_c, mem = comet_layer(p, h_c, mem, chunk_inputs(c), model, comet)
            return mem, h_c

        _, h_all = jax.lax.scan(checkpointed(chunk_step, inner), init_memory(b, model, comet), (h_all, chunks))
        return h_all, None

    h, _ = jax.lax.scan(checkpointed(layer_step, outer), h, params["layers"])
    return h


def chunk_major(params: dict, batch: dict[str, jnp.ndarray], model: ModelConfig, comet: CometConfig,
                remat: bool | str = True) -> jnp.ndarray:
    """Per-token loss [N, B, C]: for each chunk (scan), run every layer (scan); only the
    per-layer memories are carried from one chunk to the next."""
    n, b = batch["tokens"].shape[:2]

    def chunk_step(mems, c):
        h, mems, _ = chunk_layers(params, mems, c["tokens"], chunk_inputs(c), model, comet)
        return mems, text_nll(params, h, c["labels"], model, comet)

    _, nll = jax.lax.scan(checkpointed(chunk_step, remat), stacked_memory(b, model, comet), batch)
    return nll


def chunk_layers(params: dict, mems: Memory, tokens: jnp.ndarray, inputs: dict[str, jnp.ndarray],
                 model: ModelConfig, comet: CometConfig, with_kv: bool = False):
    """One chunk (tokens [B, S]) through every layer, memories stacked [L, ...]: returns
    (last hidden [B, S, D], new memories, the layers' keys and values [L, B, S, K, hd] or None)."""

    def layer_step(h, pm):
        p, mem = pm
        h, mem, kv = comet_layer_kv(p, h, mem, inputs, model, comet)
        return h, (mem, kv if with_kv else None)

    h, (mems, kv) = jax.lax.scan(layer_step, backbone.embed(params, tokens, model), (params["layers"], mems))
    return h, mems, kv


def token_losses(params: dict, batch: dict[str, Any], model: ModelConfig, comet: CometConfig,
                 schedule: str = "layer_major", remat: bool | str = True) -> jnp.ndarray:
    """Per-token loss [N, B, C] (0 where unlabeled), computed in the model's compute dtype."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    params = backbone.cast_params(params, model.dtype)
    batch = {k: jnp.asarray(batch[k]) for k in ("tokens", "valid", "positions", "labels", "first", "live")}
    run = layer_major if schedule == "layer_major" else chunk_major
    return run(params, batch, model, comet, remat)


@partial(jax.jit, static_argnames=("model", "comet", "schedule", "remat"))
def loss(params: dict, batch: dict[str, Any], model: ModelConfig, comet: CometConfig,
         schedule: str = "layer_major", remat: bool | str = True) -> jnp.ndarray:
    """Sum of token losses / number of labeled tokens (docs/design.md §1.3)."""
    nll = token_losses(params, batch, model, comet, schedule, remat)
    count = jnp.sum(jnp.asarray(batch["labels"]) != IGNORE)
    return jnp.sum(nll) / jnp.maximum(count, 1)


@partial(jax.jit, static_argnames=("model", "comet"))
def text_logits(params: dict, batch: dict[str, Any], model: ModelConfig, comet: CometConfig) -> jnp.ndarray:
    """Teacher-forced logits [N, B, C, V] (float32) at the text slots (tests, short inputs)."""
    params = backbone.cast_params(params, model.dtype)
    batch = {k: jnp.asarray(batch[k]) for k in ("tokens", "valid", "positions", "first", "live")}
    h = layer_major_hidden(params, batch, model, comet, remat=False)
    h = backbone.final_norm(params, h[..., Slots.of(comet).text_slots, :], model)
    return backbone.head_logits(params, h, model)
