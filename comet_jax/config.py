"""Typed configs: the single source of defaults.

`ModelConfig` describes a Llama/Qwen3 backbone, `CometConfig` the CoMeT memory
settings (docs/design.md §1.1). Both are frozen dataclasses so they can be static
arguments of jitted functions. `model_config_from_hf` reads an HF `config.json` in
either the transformers-4 (`rope_theta`/`rope_scaling`) or the transformers-5
(`rope_parameters`) spelling.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

SUPPORTED_ARCHITECTURES = {
    "LlamaForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
    "MemQwen3ForCausalLM": "qwen3",  # official CoMeT checkpoints (docs/design.md §1.8)
}
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
# float64 is for verification against the reference only (needs jax_enable_x64).
DTYPES = ("float32", "bfloat16", "float16", "float64")
# The rank of the memory nets' residual bottleneck (docs/design.md §1.3).
MEMORY_RANK = 8
# Every enum-like setting of the project, defined here once.
MODES = ("comet", "full")  # CoMeT chunks with memory, or the plain backbone (the baseline)
SCHEDULES = ("layer_major", "chunk_major")
PLANNERS = ("fixed", "right_aligned", "uniform", "random", "semantic")
SOURCES = ("passkey", "jsonl", "arrayrecord")
PASSKEY_FILLERS = ("cycle", "random")  # filler sentences in their fixed cycle, or drawn at random
# where a key's later questions go: after more filler each ("spread"), or all straight after its
# first answer ("end": the first question then comes as late as the length allows)
PASSKEY_REPEATS = ("spread", "end")
# where data.passkey.shift's filler goes: between the task line and the rest ("task"), or
# before the task line ("start": the needle of depth 0 still follows the task line directly)
PASSKEY_SHIFT_AT = ("task", "start")
# names of the extra passkey keys (data.passkey.named): words the passkey tokenizer already has
PASSKEY_NAMES = ("blue", "green", "yellow")
# the question of a training example: always the one wording ("fixed"), or one of a few drawn
# per question ("varied"), or lead sentences and a stem composed per question ("composed"), or
# those and as many leads of random words ("scrambled"); none of them is the held-out prompt's
PASSKEY_WORDINGS = ("fixed", "varied", "composed", "scrambled")
TRAIN_DTYPES = ("float32", "bfloat16")
REMATS = ("full", "dots", "offload", "none")  # activation recompute policies (comet_jax/model/remat.py)
# The attention kernel (comet_jax/model/attention.py); "auto" picks one per backend at trace time.
ATTENTIONS = ("auto", "xla", "splash", "cudnn")
ATTENTION_HELP = "attention kernel: auto (splash on TPU, cudnn on GPU with bf16/fp16, else xla), xla, splash, cudnn"


class ConfigError(ValueError):
    """A config value is missing or invalid; the message names the key and the fix."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    type: str = "default"
    factor: float = 1.0
    # llama3 only
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192

    def validate(self) -> None:
        if self.type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"rope type {self.type!r} is not supported; supported: {', '.join(SUPPORTED_ROPE_TYPES)}"
            )
        if self.theta <= 0:
            raise ConfigError(f"rope theta must be > 0, got {self.theta}")
        if self.type == "llama3" and self.high_freq_factor == self.low_freq_factor:
            raise ConfigError("rope llama3: high_freq_factor must differ from low_freq_factor")


@dataclass(frozen=True)
class BackboneShape:
    """The shape of a decoder-only Llama/Qwen3 backbone: shared by `ModelConfig` and the training
    config's model section (a model trained from scratch), with one set of rules."""

    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 32
    rms_eps: float = 1e-6
    tie_embeddings: bool = False
    qk_norm: bool = False  # Qwen3's per-head RMSNorm on q and k
    dtype: str = "float32"  # compute dtype
    param_dtype: str = "float32"  # storage dtype
    # How attention is computed, not what: it changes no parameter, so a checkpoint runs under any.
    attention: str = "auto"

    def validate_shape(self, dtypes: tuple[str, ...] = DTYPES) -> None:
        for key in ("hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(self, key) <= 0:
                raise ConfigError(f"model.{key} must be > 0, got {getattr(self, key)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model.num_heads ({self.num_heads}) must be a multiple of model.num_kv_heads "
                f"({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ConfigError(f"model.head_dim must be even for RoPE, got {self.head_dim}")
        for key in ("dtype", "param_dtype"):
            if getattr(self, key) not in dtypes:
                raise ConfigError(f"model.{key} must be one of {', '.join(dtypes)}, got {getattr(self, key)!r}")
        if self.attention not in ATTENTIONS:
            raise ConfigError(f"model.attention must be one of {', '.join(ATTENTIONS)}, got {self.attention!r}")


@dataclass(frozen=True)
class ModelConfig(BackboneShape):
    """A decoder-only Llama/Qwen3 backbone: its shape, vocabulary and RoPE."""

    vocab_size: int = 256
    rope: RopeConfig = field(default_factory=RopeConfig)
    initializer_range: float = 0.02
    # Rows of the embedding that are real tokens; rows beyond are vocabulary padding and
    # are masked out of every softmax (docs/design.md §1.4). None means all rows are real.
    num_real_tokens: int | None = None
    family: str = "llama"

    @property
    def real_vocab(self) -> int:
        return self.vocab_size if self.num_real_tokens is None else self.num_real_tokens

    def validate(self) -> None:
        if self.vocab_size <= 0:
            raise ConfigError(f"model.vocab_size must be > 0, got {self.vocab_size}")
        self.validate_shape()
        if self.num_real_tokens is not None and not 0 < self.num_real_tokens <= self.vocab_size:
            raise ConfigError(
                f"model.num_real_tokens ({self.num_real_tokens}) must be in [1, vocab_size={self.vocab_size}]"
            )
        self.rope.validate()


def check_comet_settings(chunk_size: int, global_size: int, stride: int, budget: int) -> None:
    """The rules of the four CoMeT settings, for a model's config and for a training config."""
    if chunk_size <= 0:
        raise ConfigError(f"comet.chunk_size must be > 0, got {chunk_size}")
    if global_size < 0:
        raise ConfigError(f"comet.global_size must be >= 0, got {global_size}")
    if stride == 0 or stride < -1:
        raise ConfigError(f"comet.stride must be > 0, or -1 to disable temp memory; got {stride}")
    if stride > 0 and budget <= 0:
        raise ConfigError(f"comet.budget must be > 0 when comet.stride > 0, got {budget}")


@dataclass(frozen=True)
class CometConfig:
    """CoMeT memory settings (docs/design.md §1.1). G = 0 disables global memory, stride = -1 temp memory."""

    chunk_size: int = 64
    global_size: int = 0
    stride: int = -1
    budget: int = 0
    placeholder_id: int = -1
    temp_beacon_id: int = -1
    global_beacon_ids: tuple[int, ...] = ()

    @property
    def has_global(self) -> bool:
        return self.global_size > 0

    @property
    def has_temp(self) -> bool:
        return self.stride > 0

    @property
    def has_memory(self) -> bool:
        return self.has_global or self.has_temp

    def validate(self, vocab_size: int | None = None) -> None:
        check_comet_settings(self.chunk_size, self.global_size, self.stride, self.budget)
        if len(self.global_beacon_ids) != self.global_size:
            raise ConfigError(
                f"comet.global_beacon_ids has {len(self.global_beacon_ids)} ids but comet.global_size "
                f"is {self.global_size}; they must match"
            )
        ids = list(self.global_beacon_ids)
        if self.has_memory:
            ids.append(self.placeholder_id)
        if self.has_temp:
            ids.append(self.temp_beacon_id)
        if len(set(ids)) != len(ids):
            raise ConfigError("comet token ids (placeholder, temp beacon, global beacons) must be distinct")
        for i in ids:
            if i < 0 or (vocab_size is not None and i >= vocab_size):
                raise ConfigError(f"comet token id {i} is outside the vocabulary [0, {vocab_size})")


# ---------------------------------------------------------------------------------------
# HF config.json


def _rope_from_hf(cfg: dict[str, Any]) -> RopeConfig:
    # transformers 5: rope_parameters = {"rope_type", "rope_theta", ...}; transformers 4:
    # rope_theta at top level plus an optional rope_scaling dict.
    params = dict(cfg.get("rope_parameters") or {})
    scaling = cfg.get("rope_scaling") or {}
    if scaling and not params:
        params = dict(scaling)
    theta = params.get("rope_theta", cfg.get("rope_theta", 10000.0))
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise ConfigError(
            f"config.json: rope type {rope_type!r} is not supported; supported: "
            f"{', '.join(SUPPORTED_ROPE_TYPES)}"
        )
    kwargs: dict[str, Any] = {"theta": float(theta), "type": rope_type}
    if rope_type in ("linear", "llama3"):
        if "factor" not in params:
            raise ConfigError(f"config.json: rope type {rope_type!r} needs a 'factor'")
        kwargs["factor"] = float(params["factor"])
    if rope_type == "llama3":
        for key in ("low_freq_factor", "high_freq_factor"):
            if key not in params:
                raise ConfigError(f"config.json: rope type 'llama3' needs {key!r}")
            kwargs[key] = float(params[key])
        kwargs["original_max_position_embeddings"] = int(
            params.get("original_max_position_embeddings", cfg.get("max_position_embeddings", 8192))
        )
    return RopeConfig(**kwargs)


def architecture_of(cfg: dict[str, Any]) -> str:
    archs = cfg.get("architectures") or []
    if not archs:  # configs written without a head class still name their model type
        archs = {"llama": ["LlamaForCausalLM"], "qwen3": ["Qwen3ForCausalLM"]}.get(cfg.get("model_type"), [])
    for a in archs:
        if a in SUPPORTED_ARCHITECTURES:
            return a
    raise ConfigError(
        f"config.json: architecture {archs or cfg.get('model_type')!r} is not supported; "
        f"supported: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


def model_config_from_hf(cfg: dict[str, Any], dtype: str = "float32",
                         param_dtype: str = "float32") -> ModelConfig:
    """ModelConfig from the dict of an HF `config.json` (Llama or Qwen3)."""
    arch = architecture_of(cfg)
    family = SUPPORTED_ARCHITECTURES[arch]
    for key in ("attention_bias", "mlp_bias"):
        if cfg.get(key):
            raise ConfigError(f"config.json: {key}=true is not supported (Llama/Qwen3 without biases only)")
    if cfg.get("use_sliding_window"):
        raise ConfigError("config.json: use_sliding_window=true is not supported")
    act = cfg.get("hidden_act", "silu")
    if act != "silu":
        raise ConfigError(f"config.json: hidden_act {act!r} is not supported (silu only)")
    try:
        heads = int(cfg["num_attention_heads"])
        mc = ModelConfig(
            vocab_size=int(cfg["vocab_size"]),
            hidden_size=int(cfg["hidden_size"]),
            intermediate_size=int(cfg["intermediate_size"]),
            num_layers=int(cfg["num_hidden_layers"]),
            num_heads=heads,
            num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            head_dim=int(cfg.get("head_dim") or cfg["hidden_size"] // heads),
            rope=_rope_from_hf(cfg),
            rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            qk_norm=family == "qwen3",
            dtype=dtype,
            param_dtype=param_dtype,
            initializer_range=float(cfg.get("initializer_range", 0.02)),
            family=family,
        )
    except KeyError as e:
        raise ConfigError(f"config.json: missing key {e.args[0]!r}") from None
    mc.validate()
    return mc


# ---------------------------------------------------------------------------------------
# (de)serialization of our own configs


def to_dict(obj: Any) -> dict[str, Any]:
    d = dataclasses.asdict(obj)
    return d


def model_config_from_dict(d: dict[str, Any]) -> ModelConfig:
    d = dict(d)
    rope = RopeConfig(**d.pop("rope", {}))
    _reject_unknown(ModelConfig, d, "model")
    return ModelConfig(rope=rope, **d)


def comet_config_from_dict(d: dict[str, Any]) -> CometConfig:
    d = dict(d)
    _reject_unknown(CometConfig, d, "comet")
    if "global_beacon_ids" in d:
        d["global_beacon_ids"] = tuple(int(i) for i in d["global_beacon_ids"])
    return CometConfig(**d)


def _reject_unknown(cls: type, d: dict[str, Any], prefix: str) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{unknown[0]}; known keys: {', '.join(sorted(known))}")


def dumps(model: ModelConfig, comet: CometConfig, extra: dict[str, Any] | None = None) -> str:
    return json.dumps({"model": to_dict(model), "comet": to_dict(comet), **(extra or {})}, indent=2)
