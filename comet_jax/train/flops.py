"""Model FLOPs per text token for CoMeT's real layout (for throughput and MFU figures).

A chunk of C text tokens carries, once memory is warm, G global placeholders,
min(budget, beacons so far) temp placeholders, ceil(C / stride) temp beacons and G
global beacons: every one of them goes through every layer. Counted: matmul FLOPs
(2 per multiply-add) of the projections and MLP on every real slot, causal attention
(average context (S+1)/2), the LM head on text tokens and the memory nets. Training
counts 3x forward (backward = 2x), without the recompute of activation checkpointing,
as MFU conventionally does.
"""

from __future__ import annotations

from comet_jax.config import MEMORY_RANK, CometConfig, ModelConfig


def real_slots_per_chunk(comet: CometConfig, steady: bool = True) -> int:
    """Real slots of a full chunk (with a full temp queue when `steady`)."""
    beacons = -(-comet.chunk_size // comet.stride) if comet.has_temp else 0
    placeholders = comet.global_size + (comet.budget if comet.has_temp and steady else 0)
    return placeholders + comet.chunk_size + beacons + comet.global_size


def forward_flops_per_token(model: ModelConfig, comet: CometConfig | None = None, context: int | None = None) -> float:
    """Forward FLOPs per text token. comet=None: the plain backbone with `context` tokens."""
    d, f, L = model.hidden_size, model.intermediate_size, model.num_layers
    hq, hkv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    per_slot_layer = 2 * (d * (hq + 2 * hkv) + hq * d + 3 * d * f)
    if comet is None:
        slots, tokens = context or 1, context or 1
    else:
        slots, tokens = real_slots_per_chunk(comet), comet.chunk_size
    attention = 2 * 2 * hq * (slots + 1) / 2  # QK^T and PV over the causal context, per slot
    memory = 0.0
    if comet is not None:
        r = MEMORY_RANK
        memory += comet.global_size * (2 * 2 * d + 2 * 2 * d * r) if comet.has_global else 0
        memory += (-(-comet.chunk_size // comet.stride)) * 2 * 2 * d * r if comet.has_temp else 0
    per_chunk = L * (slots * (per_slot_layer + attention) + memory)
    return per_chunk / tokens + 2 * d * model.vocab_size


def train_flops_per_token(model: ModelConfig, comet: CometConfig | None = None, context: int | None = None) -> float:
    return 3 * forward_flops_per_token(model, comet, context)


def param_count(model: ModelConfig, comet: CometConfig) -> int:
    """Number of parameters, memory nets included."""
    d, f, r = model.hidden_size, model.intermediate_size, MEMORY_RANK
    hq, hkv = model.num_heads * model.head_dim, model.num_kv_heads * model.head_dim
    layer = d * (hq + 2 * hkv) + hq * d + 3 * d * f + 2 * d + (2 * model.head_dim if model.qk_norm else 0)
    if comet.has_global:
        layer += d + 2 * d + 2 * d * r
    if comet.has_temp:
        layer += d + 2 * d * r
    heads = 1 if model.tie_embeddings else 2
    return model.num_layers * layer + heads * model.vocab_size * d + d
