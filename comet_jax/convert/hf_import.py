"""Convert a local HF Llama / Qwen3 / official CoMeT directory into our checkpoint.

Tensors are read one at a time from the safetensors files (each file is opened for
one tensor and closed again, so no shard stays mapped) and each parameter leaf is
written as soon as it is complete: host memory holds about one stacked leaf, not the
model. CoMeT is added as DESIGN.md §1.4 says: new token rows around the mean of the
existing rows, vocabulary padded to a multiple of 256 (padding rows masked), and
fresh memory nets per layer, unless the source is an official CoMeT checkpoint, whose
rows, ids and memory nets are kept.
"""

from __future__ import annotations

import json
import os
import resource
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors can load it)
import numpy as np
from safetensors import safe_open

from comet_jax.checkpoint import StreamingWriter, atomic_dir, write_meta
from comet_jax.config import (MEMORY_RANK, CometConfig, ConfigError, ModelConfig, architecture_of,
                              model_config_from_hf)
from comet_jax.convert import tokenizer_files
from comet_jax.convert.hf_names import hf_to_ours

VOCAB_MULTIPLE = 256
# Recipe defaults (DESIGN.md §1.4) for a plain backbone converted without flags.
RECIPE = {"chunk_size": 2048, "global_size": 512, "stride": 8, "budget": 2048}
NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


class ConvertError(RuntimeError):
    """Bad source or arguments; nothing was written."""


@dataclass
class TensorIndex:
    """Which safetensors file holds each tensor."""

    files: dict[str, Path]

    @classmethod
    def scan(cls, src: Path) -> "TensorIndex":
        index = src / "model.safetensors.index.json"
        if index.is_file():
            weight_map = json.loads(index.read_text())["weight_map"]
            files = {name: src / f for name, f in weight_map.items()}
            missing = sorted({str(p) for p in files.values() if not p.is_file()})
            if missing:
                raise ConvertError(f"{index} lists {missing[0]}, which does not exist")
            return cls(files)
        shards = sorted(src.glob("*.safetensors"))
        if not shards:
            raise ConvertError(f"no *.safetensors files in {src} (PyTorch .bin checkpoints are not supported)")
        files = {}
        for shard in shards:
            with safe_open(shard, framework="numpy") as f:
                for name in f.keys():
                    files[name] = shard
        return cls(files)

    def read(self, name: str) -> np.ndarray:
        with safe_open(self.files[name], framework="numpy") as f:
            return f.get_tensor(name)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def grow_rows(old: np.ndarray, n_new: int, rng: np.random.Generator) -> np.ndarray:
    """n_new rows drawn from N(mean, 1e-5 * covariance) of the existing rows (as HF's
    mean-resizing does), so new tokens start as 'average' tokens."""
    old64 = old.astype(np.float64)
    mean = old64.mean(axis=0)
    centered = old64 - mean
    cov = centered.T @ centered / max(len(old64) - 1, 1)
    eigval, eigvec = np.linalg.eigh(cov * 1e-5)
    scale = eigvec * np.sqrt(np.clip(eigval, 0.0, None))
    return (mean + rng.standard_normal((n_new, old.shape[1])) @ scale.T).astype(old.dtype)


def _comet_from_official(cfg: dict[str, Any]) -> CometConfig:
    try:
        ids = tuple(int(i) for i in cfg.get("global_beacon_ids") or ())
        return CometConfig(
            chunk_size=int(cfg["chunk_size"]), global_size=len(ids), stride=int(cfg["temp_beacon_stride"]),
            budget=int(cfg.get("temp_mem_budget") or 0), placeholder_id=int(cfg["placeholder_id"]),
            temp_beacon_id=int(cfg.get("temp_beacon_id", -1)), global_beacon_ids=ids)
    except KeyError as e:
        raise ConvertError(f"official CoMeT config.json lacks {e.args[0]!r}") from None


def comet_for_vocab(vocab: int, chunk_size: int, global_size: int, stride: int, budget: int) -> CometConfig:
    """New token ids follow the existing rows: placeholder, temp beacon, global beacons."""
    next_id = vocab
    placeholder = temp = -1
    if global_size > 0 or stride > 0:
        placeholder, next_id = next_id, next_id + 1
    if stride > 0:
        temp, next_id = next_id, next_id + 1
    globals_ = tuple(range(next_id, next_id + global_size))
    return CometConfig(chunk_size=chunk_size, global_size=global_size, stride=stride,
                       budget=budget if stride > 0 else 0, placeholder_id=placeholder,
                       temp_beacon_id=temp, global_beacon_ids=globals_)


def added_tokens(comet: CometConfig) -> int:
    """Rows the CoMeT tokens take: placeholder (with any memory), temp beacon, G global beacons."""
    return len(comet.global_beacon_ids) + int(comet.has_memory) + int(comet.has_temp)


def padded_vocab(real_vocab: int) -> int:
    """Embedding rows: the real tokens rounded up to a multiple of 256 (padding rows are masked)."""
    return -(-real_vocab // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def _expected_layer_leaves(model: ModelConfig) -> list[str]:
    leaves = ["attn_norm", "mlp_norm", "wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down"]
    if model.qk_norm:
        leaves += ["q_norm", "k_norm"]
    return [f"layers.{x}" for x in leaves]


def memory_leaf_shapes(model: ModelConfig, comet: CometConfig) -> dict[str, tuple[int, ...]]:
    """Shapes (one layer) of the memory-net leaves that this CoMeT config needs."""
    d, r = model.hidden_size, MEMORY_RANK
    shapes: dict[str, tuple[int, ...]] = {}
    if comet.has_global:
        shapes.update({"layers.global_mem.norm": (d,), "layers.global_mem.gate": (2 * d,),
                       "layers.global_mem.down": (d, r), "layers.global_mem.up": (r, d)})
    if comet.has_temp:
        shapes.update({"layers.temp_mem.norm": (d,), "layers.temp_mem.down": (d, r),
                       "layers.temp_mem.up": (r, d)})
    return shapes


def init_memory_leaf(path: str, shape: tuple[int, ...], num_layers: int, std: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Norm scales start at 1, linear weights N(0, initializer_range) (DESIGN.md §1.4)."""
    if path.endswith(".norm"):
        return np.ones((num_layers, *shape), np.float32)
    return (rng.standard_normal((num_layers, *shape)) * std).astype(np.float32)


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, chunk_size: int | None = None,
            global_size: int | None = None, stride: int | None = None, budget: int | None = None,
            dtype: str | None = None, overwrite: bool = False, seed: int = 0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert SRC (an HF directory) into our checkpoint at DST. Returns a summary dict."""
    src = Path(src)
    if not src.is_dir():
        raise ConvertError(f"source directory {src} does not exist")
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{cfg_path} is missing: SRC must be a Hugging Face model directory")
    hf_cfg = json.loads(cfg_path.read_text())
    try:
        arch = architecture_of(hf_cfg)
        official = arch == "MemQwen3ForCausalLM"
        if dtype is None:
            dtype = str(hf_cfg.get("dtype") or hf_cfg.get("torch_dtype") or "float32")
            dtype = dtype if dtype in ("float32", "bfloat16") else "float32"
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
        model = model_config_from_hf(hf_cfg, param_dtype=dtype)
    except ConfigError as e:
        raise ConvertError(str(e)) from None
    if Path(dst).exists() and not overwrite:
        raise ConvertError(f"{dst} already exists; pass --overwrite to replace it")

    src_vocab = model.vocab_size
    if official:
        comet = _comet_from_official(hf_cfg)
        if global_size is not None and global_size != comet.global_size:
            raise ConvertError("--global-size cannot change an official checkpoint's G (its beacon rows are trained)")
        comet = CometConfig(**{**comet.__dict__, **{k: v for k, v in
                               {"chunk_size": chunk_size, "stride": stride, "budget": budget}.items()
                               if v is not None}})
        n_added = 0
    else:
        opts = {k: RECIPE[k] if v is None else v for k, v in
                {"chunk_size": chunk_size, "global_size": global_size, "stride": stride, "budget": budget}.items()}
        comet = comet_for_vocab(src_vocab, **opts)
        n_added = added_tokens(comet)
    real_vocab = src_vocab + n_added
    new_vocab = padded_vocab(real_vocab)
    model = ModelConfig(**{**model.__dict__, "vocab_size": new_vocab, "num_real_tokens": real_vocab})
    try:
        model.validate()
        comet.validate(vocab_size=real_vocab)
    except ConfigError as e:
        raise ConvertError(str(e)) from None

    # Map every tensor before writing anything: an unknown or missing tensor fails early.
    index = TensorIndex.scan(src)
    by_leaf: dict[str, dict[int | None, tuple[str, bool]]] = defaultdict(dict)
    for name in index.files:
        try:
            target = hf_to_ours(name)
        except KeyError as e:
            raise ConvertError(f"{src}: {e.args[0]}") from None
        if target is not None:
            by_leaf[target.path][target.layer] = (name, target.transpose)
    memory_shapes = memory_leaf_shapes(model, comet)
    required = _expected_layer_leaves(model) + (list(memory_shapes) if official else [])
    for leaf in required:
        have = by_leaf.get(leaf, {})
        for layer in range(model.num_layers):
            if layer not in have:
                raise ConvertError(f"{src}: no tensor for {leaf} of layer {layer}")
    for leaf in ("embed", "final_norm") + (() if model.tie_embeddings else ("lm_head",)):
        if None not in by_leaf.get(leaf, {}):
            raise ConvertError(f"{src}: no tensor for {leaf} (tie_word_embeddings={model.tie_embeddings})")

    np_dtype = NP_DTYPES[dtype]
    rng = np.random.default_rng(seed)
    with atomic_dir(dst, overwrite=overwrite) as tmp:
        writer = StreamingWriter(tmp)
        for leaf in ["embed", "final_norm"] + ([] if model.tie_embeddings else ["lm_head"]):
            name, transpose = by_leaf[leaf][None]
            value = index.read(name)
            if leaf in ("embed", "lm_head"):
                # both (V, D) in torch
                if value.shape[0] != src_vocab:
                    raise ConvertError(f"{name} has {value.shape[0]} rows, config.json says vocab_size={src_vocab}")
                if new_vocab > src_vocab:
                    value = np.concatenate([value, grow_rows(value, new_vocab - src_vocab, rng)])
            writer.write(leaf, (value.T if transpose else value).astype(np_dtype))
            log(f"  {leaf:28s} {tuple(value.shape)}")
        for leaf in required:
            layers = by_leaf[leaf]
            stacked = None
            for layer in range(model.num_layers):
                name, transpose = layers[layer]
                value = index.read(name)
                value = value.T if transpose else value
                if leaf == "layers.global_mem.gate":  # torch (1, 2D) -> (2D,)
                    value = value.reshape(-1)
                if stacked is None:
                    stacked = np.empty((model.num_layers, *value.shape), np_dtype)
                if value.shape != stacked.shape[1:]:
                    raise ConvertError(f"{name} has shape {value.shape}, layer 0 had {stacked.shape[1:]}")
                stacked[layer] = value
                del value
            writer.write(leaf, stacked)
            log(f"  {leaf:28s} {stacked.shape}")
            del stacked
        if not official:
            for i, (leaf, shape) in enumerate(memory_shapes.items()):
                leaf_rng = np.random.default_rng([seed, i])
                value = init_memory_leaf(leaf, shape, model.num_layers, model.initializer_range, leaf_rng)
                writer.write(leaf, value.astype(np_dtype))
                log(f"  {leaf:28s} {value.shape} (new)")
        writer.finalize()
        tok = tokenizer_files.copy_with_comet_tokens(src, tmp, comet, added=not official)
        extra = {"source": {"path": str(src.absolute()), "architecture": arch, "vocab_size": src_vocab},
                 "tokenizer": tok}
        write_meta(tmp, model, comet, extra)
    summary = {"dst": str(Path(dst).absolute()), "architecture": arch, "vocab_size": new_vocab,
               "num_real_tokens": real_vocab, "added_tokens": n_added, "dtype": dtype,
               "peak_rss_mb": round(_peak_rss_mb(), 1), "tokenizer": tok,
               "comet": {k: v for k, v in comet.__dict__.items() if k != "global_beacon_ids"}}
    return summary
