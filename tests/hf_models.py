"""Tiny random HF models written with transformers (the test-time oracle)."""

from __future__ import annotations

from pathlib import Path

import torch
import transformers

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def llama_config(**overrides) -> transformers.LlamaConfig:
    """GQA, llama3 RoPE scaling, untied embeddings."""
    kw = dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=8, tie_word_embeddings=False, rope_parameters=dict(LLAMA3_ROPE),
              rms_norm_eps=1e-5)
    kw.update(overrides)
    return transformers.LlamaConfig(**kw)


def qwen3_config(**overrides) -> transformers.Qwen3Config:
    """q/k norm, tied embeddings, head_dim * heads != hidden."""
    kw = dict(vocab_size=120, hidden_size=48, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, tie_word_embeddings=True,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, rms_norm_eps=1e-6)
    kw.update(overrides)
    return transformers.Qwen3Config(**kw)


def build(config, seed: int = 0):
    """A random float32 model with every RMSNorm weight perturbed away from 1."""
    torch.manual_seed(seed)
    config._attn_implementation = "eager"
    cls = {"llama": transformers.LlamaForCausalLM, "qwen3": transformers.Qwen3ForCausalLM}[config.model_type]
    model = cls(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
    return model


def save(model, path: Path, dtype=torch.float32, max_shard_size=None) -> Path:
    kw = {} if max_shard_size is None else {"max_shard_size": max_shard_size}
    model.to(dtype).save_pretrained(path, **kw)
    model.to(torch.float32)
    return path


def hf_logits(model, tokens) -> "torch.Tensor":
    with torch.no_grad():
        return model(torch.as_tensor(tokens)).logits.float().numpy()
