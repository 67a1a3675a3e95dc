"""The whole export: check everything, then stream the tensors into shards, write config.json
and the side files, all inside one temporary directory renamed into place at the end
(`checkpoint.atomic_dir`): a failed, stopped or killed export leaves nothing at DST.
`export` reads a checkpoint from disk, `export_hf` writes a parameter tree in memory."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import ml_dtypes
import numpy as np

from comet_jax.checkpoint import atomic_dir
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.export import ExportError
from comet_jax.export.hf_config import hf_config
from comet_jax.export.leaves import MemoryLeaves
from comet_jax.export.safetensors_out import DTYPE_CODES, nbytes, parse_size, plan_shards, shard_names, write_shards
from comet_jax.export.tensors import choose_layout, expected_shapes, pieces, plan
from comet_jax.resources import peak_rss_bytes

DEFAULT_SHARD_SIZE = "5GB"  # transformers' save_pretrained default
DTYPES = ("float32", "bfloat16")
NP_DTYPES = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16),
             "float16": np.dtype(np.float16)}
# Test hook, not an option: seconds to sleep after each tensor, so that a test can kill an
# export that is certainly still in progress.
PAUSE_ENV = "COMET_JAX_EXPORT_TEST_PAUSE"


def export(src: str | os.PathLike, dst: str | os.PathLike, *, step: int | None = None, dtype: str | None = None,
           layout: str | None = None, shard_size: str | int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
           drop_memory: bool = False, raw: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export SRC (a converted checkpoint or a training run directory) to an HF directory at DST
    (a run trained with optim.ema: its weight average, as RUN_DIR/model; raw: the step's parameters).
    Raises ExportError (or CheckpointError / ConfigError from the source) before writing anything."""
    from comet_jax.convert.hf_import import check_destination
    from comet_jax.export.source import open_source

    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ExportError(f"SRC {src} does not exist or is not a directory")
    check_destination(src, dst, overwrite, error=ExportError)
    parse_size(shard_size)
    source = open_source(src, step, log, raw=raw)
    choose_layout(source.model, source.comet, layout, drop_memory)  # refused before any progress line
    log(f"exporting {source.label} -> {dst}")
    summary = write_hf(source.leaves, source.model, source.comet, dst, layout=layout, dtype=dtype,
                       shard_size=shard_size, overwrite=overwrite, drop_memory=drop_memory,
                       hf_source=source.hf_config, max_positions=source.max_position_embeddings,
                       side_files=source.write_side_files, log=log)
    return {"source": source.label, **summary}


def export_hf(params: dict, model: ModelConfig, comet: CometConfig, dst: str | Path, overwrite: bool = False,
              layout: str | None = None, dtype: str | None = None, shard_size: str | int = DEFAULT_SHARD_SIZE,
              drop_memory: bool = False) -> Path:
    """Write an in-memory parameter tree as an HF directory at dst, atomically (no tokenizer).
    Default layout: official for a Qwen3 with memory, plain without memory, native otherwise."""
    import jax

    from comet_jax.checkpoint import flatten

    leaves = MemoryLeaves(flatten(jax.device_get(params)))
    write_hf(leaves, model, comet, Path(dst), layout=layout, dtype=dtype, shard_size=shard_size,
             overwrite=overwrite, drop_memory=drop_memory)
    return Path(dst)


def write_hf(leaves, model: ModelConfig, comet: CometConfig, dst: Path, *, layout: str | None = None,
             dtype: str | None = None, shard_size: str | int = DEFAULT_SHARD_SIZE, overwrite: bool = False,
             drop_memory: bool = False, hf_source: dict[str, Any] | None = None, max_positions: int | None = None,
             side_files: Callable[[Path], None] | None = None,
             log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Write `leaves` (leaves.MemoryLeaves / OrbaxLeaves) as an HF directory at dst."""
    layout = choose_layout(model, comet, layout, drop_memory)
    if dtype is not None and dtype not in DTYPES:
        raise ExportError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    dtype = dtype or (model.param_dtype if model.param_dtype in DTYPE_CODES else "float32")
    np_dtype = NP_DTYPES[dtype]
    shapes = expected_shapes(model, comet)
    tensors = plan(shapes, model, layout)
    for leaf in dict.fromkeys(t.leaf for t in tensors):  # every leaf is there, with the configs' shape
        if tuple(leaves.shape(leaf)) != shapes[leaf]:
            raise ExportError(f"parameter {leaf} has shape {tuple(leaves.shape(leaf))}, the configs say {shapes[leaf]}")
    shards = plan_shards(tensors, np_dtype, parse_size(shard_size))
    names = shard_names(len(shards))
    last = {shard[-1]: (name, sum(nbytes(t, np_dtype) for t in shard)) for name, shard in zip(names, shards)}
    config = hf_config(model, comet, layout, dtype=dtype, source=hf_source, max_position_embeddings=max_positions)
    pause = float(os.environ.get(PAUSE_ENV) or 0)

    def after(t) -> None:
        if t in last:
            log(f"  {last[t][0]}  {last[t][1] / 1e6:.1f} MB")
        if pause:
            time.sleep(pause)

    # imported before the temporary exists: a signal during its initialisation would surface
    # as an ImportError instead of the clean stop atomic_dir gives
    import tensorstore  # noqa: F401

    with atomic_dir(dst, overwrite=overwrite) as tmp:
        index = write_shards(tmp, shards, pieces(tensors, leaves, np_dtype), np_dtype, after_tensor=after)
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        if side_files is not None:
            side_files(tmp)
        _tokenizer_config(tmp, config["max_position_embeddings"])
        files = sorted(p.name for p in tmp.iterdir())
    return {"dst": str(Path(dst).absolute()), "layout": layout, "dtype": dtype, "vocab_size": model.real_vocab,
            "tensors": len(tensors), "shards": len(shards), "total_size": index["metadata"]["total_size"],
            "files": files, "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1)}


def _tokenizer_config(directory: Path, max_positions: int) -> None:
    """A tokenizer.json alone (a model trained from scratch) gets the minimal
    tokenizer_config.json that has AutoTokenizer load it as it is: without one, transformers 4
    picks the model type's tokenizer class, which adds a BOS token the vocabulary lacks."""
    if (directory / "tokenizer.json").is_file() and not (directory / "tokenizer_config.json").exists():
        cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": max_positions,
               "clean_up_tokenization_spaces": False}
        (directory / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
