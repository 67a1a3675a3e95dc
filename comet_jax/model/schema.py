"""The parameter schema: one table of every parameter leaf, read by the initialiser, the
optimizer's masks, the sharding rules and the converter.

Each leaf has symbolic dimensions (resolved per model), logical axis names (mapped to mesh
axes by the rule table in parallel/sharding.py), an initialiser, whether weight decay applies
and its learning-rate group. Layer leaves are stacked on a leading `layers` axis.

Logical axes: `layers` (the stacked layer axis), `embed` (the hidden size D), `q_heads`
(H x head_dim), `kv_heads` (K x head_dim), `mlp` (the MLP width F), `vocab`, and `norm` /
`memory` / `rank` for the norm scales and the small memory nets, which stay whole.
"""

from __future__ import annotations

from dataclasses import dataclass

from comet_jax.config import MEMORY_RANK, CometConfig, ModelConfig

LOGICAL_AXES = ("layers", "embed", "q_heads", "kv_heads", "mlp", "vocab", "norm", "memory", "rank",
                "batch", "activation_embed")


@dataclass(frozen=True)
class Leaf:
    dims: tuple[str, ...]  # symbolic: L, D, HQ, HKV, F, V, hd, 2D, r
    axes: tuple[str, ...]  # logical axis per dimension
    init: str = "normal"  # "normal" (N(0, initializer_range)) or "ones"
    decay: bool = True  # weight decay applies (matrices only)
    group: str = "base"  # learning-rate group: "base" or "memory" (optim.memory_lr_mult)
    when: str = ""  # present only with: "untied", "qk_norm", "global", "temp"


def _norm(*dims: str, group: str = "base", when: str = "") -> Leaf:
    return Leaf(dims, ("layers",) * (len(dims) - 1) + ("norm",), "ones", False, group, when)


# The order is the order in which init_params draws the random leaves (kept from before the
# schema existed, so a seed gives the same model as in earlier versions).
LEAVES: dict[str, Leaf] = {
    "layers.wq": Leaf(("L", "D", "HQ"), ("layers", "embed", "q_heads")),
    "layers.wk": Leaf(("L", "D", "HKV"), ("layers", "embed", "kv_heads")),
    "layers.wv": Leaf(("L", "D", "HKV"), ("layers", "embed", "kv_heads")),
    "layers.wo": Leaf(("L", "HQ", "D"), ("layers", "q_heads", "embed")),
    "layers.w_gate": Leaf(("L", "D", "F"), ("layers", "embed", "mlp")),
    "layers.w_up": Leaf(("L", "D", "F"), ("layers", "embed", "mlp")),
    "layers.w_down": Leaf(("L", "F", "D"), ("layers", "mlp", "embed")),
    "layers.attn_norm": _norm("L", "D"),
    "layers.mlp_norm": _norm("L", "D"),
    "layers.q_norm": _norm("L", "hd", when="qk_norm"),
    "layers.k_norm": _norm("L", "hd", when="qk_norm"),
    "layers.global_mem.norm": _norm("L", "D", group="memory", when="global"),
    # a vector per layer: no weight decay, like the norm scales
    "layers.global_mem.gate": Leaf(("L", "2D"), ("layers", "memory"), decay=False, group="memory", when="global"),
    "layers.global_mem.down": Leaf(("L", "D", "r"), ("layers", "memory", "rank"), group="memory", when="global"),
    "layers.global_mem.up": Leaf(("L", "r", "D"), ("layers", "rank", "memory"), group="memory", when="global"),
    "layers.temp_mem.norm": _norm("L", "D", group="memory", when="temp"),
    "layers.temp_mem.down": Leaf(("L", "D", "r"), ("layers", "memory", "rank"), group="memory", when="temp"),
    "layers.temp_mem.up": Leaf(("L", "r", "D"), ("layers", "rank", "memory"), group="memory", when="temp"),
    "embed": Leaf(("V", "D"), ("vocab", "embed")),
    "final_norm": _norm("D"),
    "lm_head": Leaf(("D", "V"), ("embed", "vocab"), when="untied"),
}


def _present(leaf: Leaf, model: ModelConfig, comet: CometConfig) -> bool:
    return {"": True, "untied": not model.tie_embeddings, "qk_norm": model.qk_norm, "global": comet.has_global,
            "temp": comet.has_temp}[leaf.when]


def sizes(model: ModelConfig) -> dict[str, int]:
    d = model.hidden_size
    return {"L": model.num_layers, "D": d, "HQ": model.num_heads * model.head_dim,
            "HKV": model.num_kv_heads * model.head_dim, "F": model.intermediate_size, "V": model.vocab_size,
            "hd": model.head_dim, "2D": 2 * d, "r": MEMORY_RANK}


def leaves(model: ModelConfig, comet: CometConfig) -> dict[str, tuple[Leaf, tuple[int, ...]]]:
    """The leaves this model has: dotted path -> (schema entry, concrete shape)."""
    n = sizes(model)
    return {path: (leaf, tuple(n[d] for d in leaf.dims)) for path, leaf in LEAVES.items()
            if _present(leaf, model, comet)}


def entry(path: tuple[str, ...] | str) -> Leaf:
    """The schema entry of a parameter path (a tuple of keys or a dotted string); KeyError names
    the path when it is not a parameter of any model."""
    dotted = path if isinstance(path, str) else ".".join(path)
    try:
        return LEAVES[dotted]
    except KeyError:
        raise KeyError(f"{dotted} is not in the parameter schema (comet_jax/model/schema.py)") from None
