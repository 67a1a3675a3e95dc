"""Our parameters -> an HF safetensors directory (plain Llama/Qwen3, or the official
CoMeT layout when the model has memory nets). The inverse of `hf_import`: a renaming
and a transpose, per `hf_names`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import save_file

from comet_jax.checkpoint import atomic_dir, flatten
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.convert.hf_names import TOP_NAMES, LAYER_NAMES, MEMORY_NAMES, ours_to_hf

_TRANSPOSED = {p for p, t in (*TOP_NAMES.values(), *LAYER_NAMES.values(), *MEMORY_NAMES.values()) if t}


def hf_config(model: ModelConfig, comet: CometConfig) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": model.rope.type, "rope_theta": model.rope.theta}
    if model.rope.type != "default":
        rope["factor"] = model.rope.factor
    if model.rope.type == "llama3":
        rope.update(low_freq_factor=model.rope.low_freq_factor, high_freq_factor=model.rope.high_freq_factor,
                    original_max_position_embeddings=model.rope.original_max_position_embeddings)
    official = comet.has_memory
    arch = "MemQwen3ForCausalLM" if official else {"llama": "LlamaForCausalLM", "qwen3": "Qwen3ForCausalLM"}[model.family]
    cfg = {"architectures": [arch], "model_type": "qwen3" if official else model.family,
           "vocab_size": model.vocab_size, "hidden_size": model.hidden_size,
           "intermediate_size": model.intermediate_size, "num_hidden_layers": model.num_layers,
           "num_attention_heads": model.num_heads, "num_key_value_heads": model.num_kv_heads,
           "head_dim": model.head_dim, "rms_norm_eps": model.rms_eps, "tie_word_embeddings": model.tie_embeddings,
           "hidden_act": "silu", "initializer_range": model.initializer_range, "rope_parameters": rope,
           "dtype": model.param_dtype}
    if official:
        if model.family != "qwen3":
            raise ValueError("the official CoMeT layout is Qwen3-only; export a Qwen3 model or one without memory")
        cfg.update(chunk_size=comet.chunk_size, placeholder_id=comet.placeholder_id,
                   temp_beacon_id=comet.temp_beacon_id, temp_beacon_stride=comet.stride,
                   temp_mem_budget=comet.budget, global_beacon_ids=list(comet.global_beacon_ids))
    return cfg


def export_hf(params: dict, model: ModelConfig, comet: CometConfig, dst: str | Path,
              overwrite: bool = False) -> Path:
    """Write config.json + model.safetensors (torch (out, in) layout) at dst, atomically."""
    flat = flatten(jax.device_get(params))
    tensors: dict[str, np.ndarray] = {}
    for path, value in flat.items():
        value = np.asarray(value)
        if path.startswith("layers."):
            for layer in range(value.shape[0]):
                v = value[layer]
                if path == "layers.global_mem.gate":
                    v = v[None, :]  # (2D,) -> torch (1, 2D)
                elif path in _TRANSPOSED:
                    v = v.T
                tensors[ours_to_hf(path, layer, official=comet.has_memory)] = np.ascontiguousarray(v)
        else:
            tensors[ours_to_hf(path, None)] = np.ascontiguousarray(value.T if path in _TRANSPOSED else value)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        save_file(tensors, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(hf_config(model, comet), indent=2))
    return Path(dst)
