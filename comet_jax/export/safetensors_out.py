"""safetensors shards written as a stream, plus HF's model.safetensors.index.json.

A safetensors file is an 8-byte header length, a JSON header (every tensor's dtype, shape
and byte range) and the tensors' bytes. All shapes are known before anything is read, so
the shards are planned first, each header is written first, and every piece of a tensor
goes to the file as soon as it is read: nothing waits in memory for its shard to fill.
Shards are filled in order up to the size limit; a tensor larger than the limit gets a
shard of its own (as transformers' save_pretrained does).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from comet_jax.export import ExportError
from comet_jax.export.tensors import Tensor

INDEX_FILE = "model.safetensors.index.json"
DTYPE_CODES = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str | int) -> int:
    """'5GB' (decimal units, as transformers' max_shard_size), '500MiB', or a number of bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", str(text), re.IGNORECASE)
    if not m or m.group(2).upper() not in _UNITS or float(m.group(1)) <= 0:
        raise ExportError(f"--shard-size {text!r} is not a size such as 5GB, 500MB or 2GiB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def nbytes(t: Tensor, dtype: np.dtype) -> int:
    return math.prod(t.shape) * np.dtype(dtype).itemsize


def plan_shards(tensors: list[Tensor], dtype: np.dtype, limit: int) -> list[list[Tensor]]:
    shards: list[list[Tensor]] = [[]]
    size = 0
    for t in tensors:
        n = nbytes(t, dtype)
        if shards[-1] and size + n > limit:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += n
    return shards


def shard_names(count: int) -> list[str]:
    if count == 1:
        return ["model.safetensors"]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def header(shard: list[Tensor], dtype: np.dtype) -> bytes:
    entries: dict[str, object] = {"__metadata__": {"format": "pt"}}  # transformers 4 requires "pt"
    offset = 0
    for t in shard:
        n = nbytes(t, dtype)
        entries[t.name] = {"dtype": DTYPE_CODES[np.dtype(dtype).name], "shape": list(t.shape),
                           "data_offsets": [offset, offset + n]}
        offset += n
    text = json.dumps(entries, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    return len(text).to_bytes(8, "little") + text


def write_shards(directory: Path, shards: list[list[Tensor]], stream: Iterable[tuple[Tensor, np.ndarray]],
                 dtype: np.dtype, after_tensor: Callable[[Tensor], None] = lambda t: None) -> dict:
    """Write every shard from `stream` (pieces in the planned order) and the index; returns
    the index dict ({"metadata": {"total_size"}, "weight_map"})."""
    names = shard_names(len(shards))
    pieces = iter(stream)
    weight_map: dict[str, str] = {}
    total = 0
    for name, shard in zip(names, shards):
        with open(directory / name, "wb") as f:
            f.write(header(shard, dtype))
            for t in shard:
                want, got = nbytes(t, dtype), 0
                while got < want:
                    owner, piece = next(pieces)
                    if owner != t or piece.dtype != dtype:
                        raise ExportError(f"internal: {owner.name} ({piece.dtype}) arrived where {t.name} ({dtype}) "
                                          "belongs")
                    f.write(piece.reshape(-1).view(np.uint8).data)
                    got += piece.nbytes
                if got != want:
                    raise ExportError(f"internal: {t.name} has {got} bytes, its shape {t.shape} needs {want}")
                weight_map[t.name] = name
                total += want
                after_tensor(t)
    if next(pieces, None) is not None:
        raise ExportError("internal: more tensor data than the shards were planned for")
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return index
