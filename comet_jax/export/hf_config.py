"""config.json of an export (`hf_config`): the fields transformers reads, computed from our
configs, on top of the source model's config.json when the checkpoint kept it."""

from __future__ import annotations

from typing import Any

from comet_jax.config import CometConfig, ModelConfig, to_dict
from comet_jax.convert.hf_names import NATIVE_KEY

# The official CoMeT settings keys (docs/design.md §1.8).
OFFICIAL_KEYS = ("chunk_size", "placeholder_id", "temp_beacon_id", "temp_beacon_stride", "temp_mem_budget",
                 "global_beacon_ids")
# When neither the source config nor the checkpoint says (a model trained from scratch): the
# context of current Llama / Qwen3 releases. CoMeT restarts positions in every chunk, so this
# bounds a chunk, not a sequence.
DEFAULT_MAX_POSITIONS = 131072
# Keys computed here from our configs, whatever the source config said.
_OWNED = {"architectures", "model_type", "auto_map", "vocab_size", "hidden_size", "intermediate_size",
          "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "rms_norm_eps",
          "tie_word_embeddings", "hidden_act", "initializer_range", "rope_theta", "rope_scaling",
          "rope_parameters", "torch_dtype", "dtype", "transformers_version", NATIVE_KEY, *OFFICIAL_KEYS}


def rope_fields(model: ModelConfig) -> dict[str, Any]:
    """RoPE in both spellings: transformers 4 reads `rope_theta` and `rope_scaling` (and would
    silently use its default theta without them), transformers 5 reads `rope_parameters`."""
    r = model.rope
    scaling: dict[str, Any] | None = None
    if r.type != "default":
        scaling = {"rope_type": r.type, "factor": r.factor}
    if r.type == "linear":
        scaling["type"] = "linear"  # the key older transformers 4 releases read
    if r.type == "llama3":
        scaling.update(low_freq_factor=r.low_freq_factor, high_freq_factor=r.high_freq_factor,
                       original_max_position_embeddings=r.original_max_position_embeddings)
    parameters = {"rope_type": r.type, "rope_theta": r.theta, **{k: v for k, v in (scaling or {}).items()
                                                                  if k not in ("rope_type", "type")}}
    return {"rope_theta": r.theta, "rope_scaling": scaling, "rope_parameters": parameters}


def _first(token_id: Any) -> Any:
    return token_id[0] if isinstance(token_id, list) and token_id else token_id


def hf_config(model: ModelConfig, comet: CometConfig, layout: str = "plain", *, dtype: str | None = None,
              source: dict[str, Any] | None = None, max_position_embeddings: int | None = None) -> dict[str, Any]:
    """config.json of an export in `layout` (plain, official or native; tensors.choose_layout
    decides which is allowed). Starts from the source's config.json when the checkpoint kept it,
    keeping every field we do not compute (token ids, attention_bias, use_cache, ...). Without
    one: bos/eos null, pad_token_id the eos id or else 0, max_position_embeddings the one the
    checkpoint recorded or else DEFAULT_MAX_POSITIONS."""
    dtype = dtype or model.param_dtype
    cfg = {k: v for k, v in (source or {}).items() if k not in _OWNED}
    cfg.setdefault("bos_token_id", None)
    cfg.setdefault("eos_token_id", None)
    if cfg.get("pad_token_id") is None:  # the official code needs one
        eos = _first(cfg["eos_token_id"])
        cfg["pad_token_id"] = eos if eos is not None else 0
    if not isinstance(cfg.get("max_position_embeddings"), int):
        cfg["max_position_embeddings"] = max_position_embeddings or DEFAULT_MAX_POSITIONS
    cfg.setdefault("attention_bias", False)
    if model.family == "llama":
        cfg.setdefault("mlp_bias", False)
    cfg.setdefault("use_cache", True)
    official = layout == "official"
    head = {"architectures": ["MemQwen3ForCausalLM" if official else
                              {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model.family]],
            "model_type": model.family}
    cfg.update(vocab_size=model.real_vocab, hidden_size=model.hidden_size, intermediate_size=model.intermediate_size,
               num_hidden_layers=model.num_layers, num_attention_heads=model.num_heads,
               num_key_value_heads=model.num_kv_heads, head_dim=model.head_dim, rms_norm_eps=model.rms_eps,
               tie_word_embeddings=model.tie_embeddings, hidden_act="silu",
               initializer_range=model.initializer_range, **rope_fields(model), torch_dtype=dtype, dtype=dtype)
    if official:
        cfg.update(chunk_size=comet.chunk_size, placeholder_id=comet.placeholder_id,
                   temp_beacon_id=comet.temp_beacon_id, temp_beacon_stride=comet.stride,
                   temp_mem_budget=comet.budget, global_beacon_ids=list(comet.global_beacon_ids))
    if layout == "native":
        cfg[NATIVE_KEY] = {"format": 1, **to_dict(comet)}
    return {**head, **cfg}
