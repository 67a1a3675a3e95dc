"""Parameter leaves read in slabs along one axis: from memory (`export_hf`) or from an Orbax
checkpoint on disk, with tensorstore.

An Orbax array is stored in chunks (a converted checkpoint's are the StreamingWriter's
blocks: at most 32 MB, or one layer of a stacked leaf; a training checkpoint's are the
shards the devices held). A slab is a whole number of chunks along the axis asked for, so
each chunk is decoded once and host memory holds one slab, never the leaf's neighbours.
Training checkpoints record a digest of every array (`train_checkpoint.digest`); it is
recomputed here slab by slab, so a damaged checkpoint is refused rather than exported.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np

from comet_jax.checkpoint import release_freed_memory
from comet_jax.export import ExportError


class MemoryLeaves:
    """Leaves of an in-memory flat parameter dict ({"layers.wq": array, ...})."""

    def __init__(self, flat: dict[str, np.ndarray]):
        self.arrays = {k: np.asarray(v) for k, v in flat.items()}

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(self.arrays[path].shape)

    def blocks(self, path: str, axis: int) -> Iterator[tuple[int, np.ndarray]]:
        yield 0, self.arrays[path]


class OrbaxLeaves:
    """Leaves of the Orbax pytree at `item` (a converted checkpoint's DIR/params/state, or a
    training checkpoint's RUN/checkpoints/STEP/state with the parameters under `prefix`
    "params."). `digests`: the training checkpoint's {keystr: [sum, weighted sum]}, checked
    for every leaf read to the end, each under its keystr below `digest_root` (the parameters'
    "['params']", the weight average's "['opt_state'][2].ema"); `label` names the checkpoint in
    messages."""

    def __init__(self, item: Path, prefix: str = "", digests: dict[str, list[int]] | None = None,
                 label: str = "", digest_root: str = "['params']"):
        import tensorstore as ts

        self._ts = ts
        self.item, self.prefix, self.digests = Path(item).absolute(), prefix, digests
        self.label = label or str(self.item)
        self.digest_root = digest_root
        self._context = ts.Context()  # one OCDBT reader for every leaf: they share the manifest
        self._stores: dict[str, object] = {}

    def _open(self, path: str):
        if path in self._stores:
            return self._stores[path]
        kvstore = {"driver": "ocdbt", "base": {"driver": "file", "path": f"{self.item}/"},
                   "path": f"{self.prefix}{path}/"}
        error = None
        # ours are zarr3 (StreamingWriter), Orbax's own writer's are zarr (v2) unless told otherwise
        for driver in ("zarr3", "zarr"):
            try:
                store = self._ts.open({"driver": driver, "kvstore": kvstore}, open=True, read=True,
                                      context=self._context).result()
                self._stores[path] = store
                return store
            except Exception as e:  # noqa: BLE001 - tensorstore reports a missing or unreadable array alike
                error = e
        raise ExportError(f"{self.label}: cannot read parameter {path} ({str(error).splitlines()[0][:200]})")

    def shape(self, path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in self._open(path).shape)

    def blocks(self, path: str, axis: int) -> Iterator[tuple[int, np.ndarray]]:
        store = self._open(path)
        shape = self.shape(path)
        digest = Digest(shape) if self.digests is not None else None
        if not shape:
            starts, step = [0], 1
        else:
            step = store.chunk_layout.read_chunk.shape[axis] or shape[axis]
            starts = range(0, shape[axis], step)
        for a in starts:
            index = (slice(None),) * axis + (slice(a, min(a + step, shape[axis])),) if shape else ()
            try:
                value = store[index].read().result()
            except Exception as e:  # noqa: BLE001 - a missing or truncated chunk file
                raise ExportError(f"{self.label}: cannot read parameter {path} "
                                  f"({str(e).splitlines()[0][:200]})") from None
            if digest is not None:
                digest.add(value, axis, a)
            yield a, value
            del value
            release_freed_memory()
        if digest is not None:
            self._check(path, digest.result())

    def _check(self, path: str, got: list[int] | None) -> None:
        key = self.digest_root + "".join(f"['{k}']" for k in path.split("."))
        want = self.digests.get(key)
        if got is not None and want is not None and got != list(want):
            raise ExportError(f"{self.label}: parameter {path} differs from what was saved (its digest does not "
                              "match): the checkpoint is damaged; export an earlier one with --step")


class Digest:
    """`train_checkpoint.digest` of one leaf (the sum of its raw bits, and the sum of bits times
    2i+1 for flat index i, both mod 2**32), accumulated over slabs along any axis, a million
    elements at a time (its uint64 temporaries stay small next to a block): exact, like the
    original, in any order."""

    ELEMENTS = 1 << 20

    def __init__(self, shape: tuple[int, ...]):
        self.shape = tuple(shape)
        self.strides = [math.prod(self.shape[k + 1:]) for k in range(len(self.shape))]
        self.sums = [0, 0]
        self.supported = True

    def add(self, value: np.ndarray, axis: int, start: int) -> None:
        value = np.asarray(value)
        if value.dtype.itemsize not in (1, 2, 4):  # 8-byte leaves are split into words on the devices
            self.supported = False
            return
        if value.ndim == 0:
            value = value.reshape(1)
            offsets, strides = [0], [1]
        else:
            offsets = [start if k == axis else 0 for k in range(value.ndim)]
            strides = self.strides
        rows = max(1, self.ELEMENTS // max(1, math.prod(value.shape[1:])))
        for r in range(0, value.shape[0], rows):
            piece = value[r:r + rows]
            flat = np.zeros((), np.uint64)
            for k, (n, off, stride) in enumerate(zip(piece.shape, offsets, strides)):
                off += r if k == 0 else 0
                ax = np.arange(off, off + n, dtype=np.uint64) * np.uint64(stride)
                flat = flat + ax.reshape([-1 if j == k else 1 for j in range(piece.ndim)])
            bits = _bits(piece)
            weighted = bits * (flat * np.uint64(2) + np.uint64(1))  # wraps mod 2**64: exact mod 2**32
            self.sums[0] = (self.sums[0] + int(bits.sum(dtype=np.uint64))) % 2**32
            self.sums[1] = (self.sums[1] + int(weighted.sum(dtype=np.uint64))) % 2**32

    def result(self) -> list[int] | None:
        return list(self.sums) if self.supported else None


def _bits(x: np.ndarray) -> np.ndarray:
    """The raw bits of each element as uint64 (as `train_checkpoint._bits`, widened)."""
    x = np.ascontiguousarray(x)
    if x.dtype == np.bool_:
        return x.astype(np.uint64)
    return x.view({4: np.uint32, 2: np.uint16, 1: np.uint8}[x.dtype.itemsize]).astype(np.uint64)
