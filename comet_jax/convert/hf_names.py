"""HF tensor names <-> our parameter paths (Llama, Qwen3, official CoMeT).

Each HF tensor maps to one leaf of the parameter pytree (see `comet_jax.model.backbone`),
a layer index for stacked leaves, and whether the torch (out, in) weight is transposed
to our (in, out). Official CoMeT checkpoints (docs/design.md §1.8) use an `inner_layer.` infix
for backbone tensors; plain names are accepted too. Export back is the inverse mapping.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (HF suffix inside a layer) -> (our leaf path, transpose)
LAYER_NAMES: dict[str, tuple[str, bool]] = {
    "input_layernorm.weight": ("layers.attn_norm", False),
    "post_attention_layernorm.weight": ("layers.mlp_norm", False),
    "self_attn.q_proj.weight": ("layers.wq", True),
    "self_attn.k_proj.weight": ("layers.wk", True),
    "self_attn.v_proj.weight": ("layers.wv", True),
    "self_attn.o_proj.weight": ("layers.wo", True),
    "self_attn.q_norm.weight": ("layers.q_norm", False),
    "self_attn.k_norm.weight": ("layers.k_norm", False),
    "mlp.gate_proj.weight": ("layers.w_gate", True),
    "mlp.up_proj.weight": ("layers.w_up", True),
    "mlp.down_proj.weight": ("layers.w_down", True),
}
MEMORY_NAMES: dict[str, tuple[str, bool]] = {
    "global_memory_net.norm.weight": ("layers.global_mem.norm", False),
    # (1, 2D) in torch, input order [x_hat ; s_prev]; ours is the flat (2D,) vector.
    "global_memory_net.g_proj.weight": ("layers.global_mem.gate", True),
    "global_memory_net.o_proj.down_proj.weight": ("layers.global_mem.down", True),
    "global_memory_net.o_proj.up_proj.weight": ("layers.global_mem.up", True),
    "temp_memory_net.0.weight": ("layers.temp_mem.norm", False),
    "temp_memory_net.1.down_proj.weight": ("layers.temp_mem.down", True),
    "temp_memory_net.1.up_proj.weight": ("layers.temp_mem.up", True),
}
# config.json key of our `native` export layout: the CoMeT settings (CometConfig's fields and
# a "format"), beside a plain Llama/Qwen3 config; tensors use the plain names plus MEMORY_NAMES.
NATIVE_KEY = "comet_jax"
TOP_NAMES: dict[str, tuple[str, bool]] = {
    "model.embed_tokens.weight": ("embed", False),
    "model.norm.weight": ("final_norm", False),
    "lm_head.weight": ("lm_head", True),
}
# Buffers some older checkpoints carry; they are recomputed, never loaded.
IGNORED = re.compile(r"(^|\.)rotary_emb\.inv_freq$")
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(?:inner_layer\.)?(.+)$")


@dataclass(frozen=True)
class Target:
    path: str  # dotted leaf path in the params pytree
    layer: int | None  # index on the stacked axis, None for unstacked leaves
    transpose: bool


def hf_to_ours(name: str) -> Target | None:
    """Where an HF tensor goes; None for tensors that are ignored on purpose.

    Raises KeyError for a name we do not know, so nothing is silently dropped."""
    if IGNORED.search(name):
        return None
    if name in TOP_NAMES:
        path, t = TOP_NAMES[name]
        return Target(path, None, t)
    m = _LAYER_RE.match(name)
    if m:
        layer, rest = int(m.group(1)), m.group(2)
        hit = LAYER_NAMES.get(rest) or MEMORY_NAMES.get(rest)
        if hit:
            return Target(hit[0], layer, hit[1])
    raise KeyError(f"unknown tensor name {name!r}")


def ours_to_hf(path: str, layer: int | None, official: bool = True) -> str:
    """The HF name of one of our leaves (official CoMeT layout with `inner_layer.` by default)."""
    for hf, (p, _) in TOP_NAMES.items():
        if p == path and layer is None:
            return hf
    for table, infix in ((LAYER_NAMES, "inner_layer." if official else ""), (MEMORY_NAMES, "")):
        for suffix, (p, _) in table.items():
            if p == path and layer is not None:
                return f"model.layers.{layer}.{infix}{suffix}"
    raise KeyError(f"no HF name for {path} (layer {layer})")
