"""The one way to get a model's configs: from a checkpoint on disk with the overrides a
command allows, or from scratch around a vocabulary. The trainer, every evaluation command
and every benchmark call these, so the refusals (G and the presence of temp memory are baked
into the weights) are written once.

Overrides name their keys the way the caller's user spells them: `key="comet."` gives
"comet.stride", `key="--"` gives "--stride"."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from comet_jax.config import CometConfig, ConfigError, ModelConfig, RopeConfig
from comet_jax.vocab import added_tokens, comet_for_vocab, padded_vocab


def _name(key: str, field: str) -> str:
    return f"--{field.replace('_', '-')}" if key == "--" else f"{key}{field}"


def from_checkpoint(directory: str | os.PathLike, *, chunk_size: int | None = None, stride: int | None = None,
                    budget: int | None = None, global_size: int | None = None, dtype: str | None = None,
                    attention: str | None = None, key: str = "--") -> tuple[ModelConfig, CometConfig, dict[str, Any]]:
    """(ModelConfig, CometConfig, meta) of a converted or exported checkpoint, with the given
    overrides (None = the checkpoint's). The chunk size, stride (on stays on, off stays off),
    budget, compute dtype and attention kernel may change; G may only be restated. Raises ConfigError, or
    CheckpointError for a directory that is not a checkpoint."""
    from comet_jax.checkpoint import read_meta

    model, comet, meta = read_meta(directory)
    if global_size is not None and global_size != comet.global_size:
        raise ConfigError(f"{_name(key, 'global_size')}={global_size} does not match the checkpoint {directory} "
                          f"(G={comet.global_size}): G is baked into its weights")
    if stride is not None and (stride > 0 or stride == -1) and (stride > 0) != comet.has_temp:
        raise ConfigError(f"{_name(key, 'stride')}={stride} would switch temp memory "
                          f"{'off' if comet.has_temp else 'on'}, but the checkpoint {directory} has "
                          f"{'a temp memory net' if comet.has_temp else 'none'} (stride={comet.stride}): the presence "
                          "of temp memory is baked into its weights")
    changes = {k: v for k, v in (("chunk_size", chunk_size), ("stride", stride), ("budget", budget))
               if v is not None}
    if changes:
        comet = dataclasses.replace(comet, **changes)
        if not comet.has_temp:
            comet = dataclasses.replace(comet, budget=0)
    if dtype is not None:
        model = dataclasses.replace(model, dtype=dtype)
    if attention is not None:
        model = dataclasses.replace(model, attention=attention)
    model.validate()
    comet.validate(model.real_vocab)
    return model, comet, meta


def scratch(base_vocab: int, *, chunk_size: int, global_size: int, stride: int, budget: int,
            rope_theta: float | None = None, **shape: Any) -> tuple[ModelConfig, CometConfig]:
    """Configs of a new model around a tokenizer of `base_vocab` ids: the CoMeT tokens get the
    next ids, the embedding is padded to a multiple of 256 (padding rows masked). `shape` holds
    ModelConfig fields (hidden_size, num_layers, ..., dtype, param_dtype)."""
    comet = comet_for_vocab(base_vocab, chunk_size, global_size, stride, budget)
    real = base_vocab + added_tokens(comet)
    if rope_theta is not None:
        shape["rope"] = RopeConfig(theta=rope_theta)
    model = ModelConfig(vocab_size=padded_vocab(real), num_real_tokens=real, **shape)
    model.validate()
    comet.validate(model.real_vocab)
    return model, comet


def from_sections(m: Any, c: Any, base_vocab: int | None = None) -> tuple[ModelConfig, CometConfig, str]:
    """Configs of a training config's model and comet sections, and where the shape came from.
    A converted checkpoint at `model.init` brings its shape; otherwise (scratch, or a checkpoint
    not on this machine: planning and lowering need no weights) the model section's shape keys
    give it, around `model.vocab_size` or else `base_vocab` (the tokenizer's) ids."""
    settings = dict(chunk_size=c.chunk_size, global_size=c.global_size, stride=c.stride, budget=c.budget)
    if m.init != "scratch" and os.path.isdir(m.init):
        model, comet, _ = from_checkpoint(m.init, dtype=m.dtype, attention=m.attention, key="comet.", **settings)
        return model, comet, f"checkpoint {m.init}"
    vocab = m.vocab_size or base_vocab
    if not vocab:
        raise ConfigError(f"model.init={m.init} is not a directory here and model.vocab_size is 0: set the model "
                          "section's shape (vocab_size, hidden_size, num_layers, ...) to use it without a checkpoint")
    model, comet = scratch(vocab, **settings, rope_theta=m.rope_theta, hidden_size=m.hidden_size,
                           intermediate_size=m.intermediate_size, num_layers=m.num_layers, num_heads=m.num_heads,
                           num_kv_heads=m.num_kv_heads, head_dim=m.head_dim, rms_eps=m.rms_eps,
                           tie_embeddings=m.tie_embeddings, qk_norm=m.qk_norm, dtype=m.dtype,
                           param_dtype=m.param_dtype, attention=m.attention,
                           family="llama")
    return model, comet, "the config's model section"
