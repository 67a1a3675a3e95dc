"""Our model checkpoint: an Orbax pytree plus a JSON file of configs.

    DIR/comet_jax.json   {"format": 1, "model": ModelConfig, "comet": CometConfig, ...}
    DIR/params/state/    Orbax pytree checkpoint of the parameter tree (zarr3 arrays in
                         OCDBT, as Orbax writes them; read with the same
                         StandardCheckpointer as the training checkpoints)
    DIR/tokenizer.json   (and friends) when the source had a tokenizer

Parameters are written block by block (`StreamingWriter`), so a converter never holds a
whole leaf, let alone the model, in host memory. Every writer builds the checkpoint in a
temporary sibling directory and renames it into place, so an interrupted or killed run
leaves nothing at the destination (and, once the next run has cleaned up after a kill -9,
nothing beside it).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from comet_jax.config import CometConfig, ModelConfig, comet_config_from_dict, dumps, model_config_from_dict
from comet_jax.resources import pid_alive

META_FILE = "comet_jax.json"
PARAMS_DIR = "params"
# Where StreamingWriter puts the arrays until Orbax has written the metadata of the tree.
STAGING_DIR = ".params-staging"
BLOCK_BYTES = 32 << 20
# What Orbax itself writes OCDBT databases with.
OCDBT_CONFIG = {"max_inline_value_bytes": 1024, "max_decoded_node_bytes": 100_000_000, "manifest_kind": "single"}
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


# Orbax's directory of the tree inside params/ (where the training checkpoints keep theirs,
# and where checkpoints written by Orbax's v1 API, as older versions of ours were, keep it).
ITEM_DIR = "state"


def _checkpointer():
    # Imported lazily: orbax pulls in a lot and most callers only need the configs. The one
    # Orbax API of the project (the training checkpoints use its CheckpointManager).
    import orbax.checkpoint as ocp

    return ocp.StandardCheckpointer()


def _tree_metadata(item: Path) -> Any:
    """The tree of ArrayMetadata (shape, dtype) Orbax recorded for the checkpoint at `item`."""
    ckptr = _checkpointer()
    try:
        meta = ckptr.metadata(item)
    finally:
        ckptr.close()
    return getattr(meta, "item_metadata", meta).tree


def _writer_tag() -> str:
    # The host too: on storage shared between machines a pid means nothing elsewhere.
    return f"{os.getpid()}@{socket.gethostname()}"


def remove_stale_temporaries(dst: str | os.PathLike) -> list[Path]:
    """Remove what writers of `dst` on this host that were killed outright (kill -9, a crash)
    left next to it: temporaries named after a process that no longer exists. A previous
    `dst` set aside by such a writer is kept while `dst` itself is missing: it is then the
    only copy."""
    dst = Path(dst).absolute()
    # .DST.tmp-PID@HOST-XXXX (mkdtemp's XXXX has no "-") and .DST.old-PID@HOST
    pattern = re.compile(rf"\.{re.escape(dst.name)}\.(?:tmp-(\d+)@(.+)-[a-z0-9_]+|old-(\d+)@(.+))")
    host = socket.gethostname()
    removed = []
    for p in dst.parent.iterdir() if dst.parent.is_dir() else ():
        m = pattern.fullmatch(p.name)
        if not m:
            continue
        tmp = m.group(1) is not None
        pid, writer_host = (m.group(1), m.group(2)) if tmp else (m.group(3), m.group(4))
        if writer_host == host and not pid_alive(int(pid)) and (tmp or dst.exists()):
            _discard(p)
            removed.append(p)
    return removed


def _discard(path: Path) -> None:
    """Remove a set-aside output: a symlink itself (the directory it points to is not ours),
    else the tree."""
    if path.is_symlink():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


def _remove(path: Path, settle: float = 0.5, limit: float = 10.0) -> None:
    """rmtree until `path` has stayed absent for `settle` seconds: an operation a signal cut
    short in the caller (a tensorstore open or write) still runs in the background and may
    create files and directories under `path` after it was removed."""
    deadline, gone_since = time.monotonic() + limit, None
    while time.monotonic() < deadline:
        if path.exists():
            shutil.rmtree(path, ignore_errors=True)
            gone_since = None
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= settle:
            return
        time.sleep(0.05)


class _Stop:
    """SIGTERM / SIGINT handler during an atomic write: it raises (SystemExit(128 + signal),
    KeyboardInterrupt), so the temporary directory is removed on the way out. While `held`
    (cleanup, or the renames that put the result in place) a signal is kept for later."""

    def __init__(self) -> None:
        self.held = False
        self.pending: int | None = None

    def __call__(self, signum: int, frame: Any) -> None:
        if self.held:
            self.pending = signum
        else:
            self.fire(signum)

    def fire(self, signum: int) -> None:
        self.held = True  # a second signal must not cut the cleanup short
        if signum == signal.SIGINT:
            raise KeyboardInterrupt
        raise SystemExit(128 + signum)


@contextlib.contextmanager
def _stop_on_signals(stop: _Stop) -> Iterator[None]:
    """Install `stop` for SIGTERM and SIGINT, then restore the previous handlers. Only the main
    thread can; a signal the process was told to ignore stays ignored."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:
                previous[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, signal.SIG_DFL if old is None else old)


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` only if the block succeeds.

    The temporary is `.DST.tmp-PID@HOST-XXXX` next to `dst`. It is removed when the block raises,
    and on SIGTERM / SIGINT (which stop the block by raising); temporaries that earlier,
    killed writers of the same `dst` left are removed first."""
    dst = Path(dst).absolute()
    remove_stale_temporaries(dst)
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    stop = _Stop()
    with _stop_on_signals(stop):
        tmp = None
        try:
            # a signal between creating the temporary and knowing its name would leave it behind
            stop.held = True
            tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-{_writer_tag()}-", dir=dst.parent))
            tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint is an ordinary directory
            stop.held = False
            if stop.pending is not None:
                stop.fire(stop.pending)
            yield tmp
            stop.held = True  # between the two renames `dst` is missing: finish them first
            if dst.exists() or dst.is_symlink():
                old = dst.with_name(f".{dst.name}.old-{_writer_tag()}")
                dst.rename(old)
                tmp.rename(dst)
                _discard(old)
            else:
                tmp.rename(dst)
        except BaseException:
            stop.held = True
            if tmp is not None:
                _remove(tmp)
            raise
        if stop.pending is not None:  # the result is in place; now honour the signal
            stop.fire(stop.pending)


def nest(flat: dict[str, Any]) -> dict[str, Any]:
    """{"layers.wq": x} -> {"layers": {"wq": x}}."""
    tree: dict[str, Any] = {}
    for path, value in flat.items():
        node = tree
        *parents, leaf = path.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return tree


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


class LeafWriter:
    """One parameter leaf on disk, filled block by block: a block is a range along `axis` (the
    layer axis of a stacked leaf, else the longest axis) and is exactly one zarr3 chunk, so a
    write never reads back or re-encodes what an earlier one wrote."""

    def __init__(self, store: Any, shape: tuple[int, ...], dtype: Any, axis: int | None, length: int):
        self.shape, self.dtype, self.axis, self.length = tuple(shape), np.dtype(dtype), axis, length
        self._store = store
        self._done: set[int] = set()

    def blocks(self) -> list[slice | None]:
        """The blocks to fill, in order (None: the whole of a 0-d leaf)."""
        if self.axis is None:
            return [None]
        n = self.shape[self.axis]
        return [slice(a, min(a + self.length, n)) for a in range(0, n, self.length)]

    def index(self, block: slice | None) -> tuple:
        return () if block is None else (slice(None),) * self.axis + (block,)

    def write(self, block: slice | None, value: np.ndarray) -> None:
        value = np.asarray(value, self.dtype)
        expected = list(self.shape)
        if block is not None:
            expected[self.axis] = len(range(*block.indices(self.shape[self.axis])))
        if value.shape != tuple(expected):
            raise CheckpointError(f"a block of shape {value.shape} written where {tuple(expected)} belongs")
        # The caller drops `value` after this call, so tensorstore may keep it rather than copy it.
        future = self._store[self.index(block)].write(value, can_reference_source_data_indefinitely=True)
        try:
            future.result()
        except BaseException:
            # A signal interrupts the wait, not the write: let the write end before anyone
            # removes the directory it writes into.
            with contextlib.suppress(BaseException):
                future.commit.result()
            raise
        self._done.add(0 if block is None else block.start)
        release_freed_memory()

    @property
    def complete(self) -> bool:
        return len(self._done) == len(self.blocks())


class StreamingWriter:
    """Writes DIR/params one block of one leaf at a time, so no writer holds the model.

    Orbax's writers hold a whole leaf and up to two encoded copies of it while they write it
    (OCDBT commits a leaf's data at once), and glibc keeps much of that memory afterwards, so
    the arrays are written here with tensorstore, a block per commit, in the format Orbax
    reads (zarr3 arrays in an OCDBT database, zstd), into a staging directory. `finalize`
    has Orbax write its metadata for the tree, with placeholder arrays, and puts the staged
    database in place of the placeholders'. A block is at most `block_bytes`, but never less
    than one layer of a stacked leaf or one row of another leaf: that bounds a streaming
    writer's host memory (two blocks: the block and its encoded copy)."""

    def __init__(self, directory: Path, block_bytes: int | None = None):
        import tensorstore as ts

        self.path = Path(directory) / PARAMS_DIR
        self.staging = Path(directory) / STAGING_DIR
        self.block_bytes = block_bytes or BLOCK_BYTES
        self.leaves: dict[str, LeafWriter] = {}
        self._ts = ts
        self._context = ts.Context()  # one OCDBT writer for every leaf: they share the manifest

    @property
    def written(self) -> list[str]:
        return list(self.leaves)

    def leaf(self, path: str, shape: tuple[int, ...], dtype: Any) -> LeafWriter:
        """Start a leaf; fill each of its `blocks()` with `write` before `finalize`."""
        if path in self.leaves:
            raise CheckpointError(f"parameter {path} written twice")
        shape, dtype = tuple(int(n) for n in shape), np.dtype(dtype)
        axis = None if not shape else 0 if path.startswith("layers.") else int(np.argmax(shape))
        length = 1
        chunk = list(shape)
        if axis is not None:
            slab = dtype.itemsize * math.prod(shape) // max(shape[axis], 1)
            length = max(1, min(shape[axis], self.block_bytes // max(slab, 1)))
            chunk[axis] = length
        spec = {"driver": "zarr3",
                "kvstore": {"driver": "ocdbt", "base": {"driver": "file", "path": f"{self.staging.absolute()}/"},
                            "path": f"{path}/",
                            "config": OCDBT_CONFIG},
                "metadata": {"shape": list(shape), "data_type": dtype.name,
                             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunk}},
                             "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                                        {"name": "zstd", "configuration": {"level": 3}}]},
                # Orbax reads a missing chunk as an error, not as zeros: store all-zero blocks too.
                "store_data_equal_to_fill_value": True}
        store = self._ts.open(spec, create=True, context=self._context).result()
        self.leaves[path] = LeafWriter(store, shape, dtype, axis, length)
        return self.leaves[path]

    def write(self, path: str, value: np.ndarray) -> None:
        value = np.asarray(value)
        leaf = self.leaf(path, value.shape, value.dtype)
        for block in leaf.blocks():
            leaf.write(block, value[leaf.index(block)])

    def finalize(self) -> None:
        if not self.leaves:
            raise CheckpointError("no parameters were written")
        partial = [p for p, leaf in self.leaves.items() if not leaf.complete]
        if partial:
            raise CheckpointError(f"parameter {partial[0]} was not written completely")
        shapes = {p: (leaf.shape, leaf.dtype) for p, leaf in self.leaves.items()}
        for leaf in self.leaves.values():
            leaf._store = None
        self._context = None
        self.path.mkdir(parents=True, exist_ok=True)
        import orbax.checkpoint as ocp

        # zarr3, as the staged arrays are written (the standard writer's default is zarr2)
        ckptr = ocp.Checkpointer(ocp.PyTreeCheckpointHandler(use_ocdbt=True, use_zarr3=True))
        try:
            placeholders = nest({p: np.zeros((1,) * len(s), d) for p, (s, d) in shapes.items()})
            ckptr.save(self.path / ITEM_DIR, args=ocp.args.PyTreeSave(placeholders))
        finally:
            ckptr.close()
        items = [d for d in self.path.iterdir() if (d / "_METADATA").is_file() and (d / "manifest.ocdbt").is_file()]
        if len(items) != 1:
            raise CheckpointError(f"unexpected Orbax checkpoint layout in {self.path}")
        for p in items[0].iterdir():  # the placeholders' OCDBT database: its manifest, data, per-process parts
            if p.name in ("manifest.ocdbt", "d") or p.name.startswith("ocdbt.process_"):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
        for p in self.staging.iterdir():
            p.rename(items[0] / p.name)
        self.staging.rmdir()
        # Orbax must read back what was staged, or the checkpoint is refused now rather than at load.
        meta = flatten(_tree_metadata(self.path / ITEM_DIR))
        got = {p: (tuple(m.shape), np.dtype(m.dtype)) for p, m in meta.items()}
        if got != shapes:
            raise CheckpointError(f"{self.path}: Orbax reads back {got}, expected {shapes}")


def release_freed_memory() -> None:
    """Give freed heap memory back to the system. tensorstore encodes in many threads, and
    glibc keeps what each thread's arena freed: without this, resident memory grows by up to
    an encoded block per arena (and with Orbax's own writer, by up to a leaf per arena)."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def mmap_large_buffers(threshold: int = 1 << 20) -> None:
    """Have glibc give every buffer of `threshold` bytes or more its own mapping, unmapped when
    freed. By default glibc raises that threshold to the size of each large buffer freed (up
    to 32 MB), after which blocks of that size come from per-thread heaps that keep them: a
    streaming reader's resident memory then grows by a few blocks per tensorstore thread."""
    try:
        ctypes.CDLL(None).mallopt(-3, threshold)  # M_MMAP_THRESHOLD; setting it stops the raising
    except (OSError, AttributeError):  # not glibc
        pass


def write_meta(directory: Path, model: ModelConfig, comet: CometConfig, extra: dict[str, Any] | None = None) -> None:
    text = dumps(model, comet, {"format": FORMAT_VERSION, **(extra or {})})
    (Path(directory) / META_FILE).write_text(text + "\n")


def read_meta(directory: str | os.PathLike) -> tuple[ModelConfig, CometConfig, dict[str, Any]]:
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{directory} is not a comet-jax checkpoint (no {META_FILE}); convert an HF model first with "
            "`comet-convert SRC DST`"
        )
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT_VERSION}")
    model = model_config_from_dict(meta["model"])
    comet = comet_config_from_dict(meta["comet"])
    return model, comet, meta


def save(directory: str | os.PathLike, params: dict[str, Any], model: ModelConfig, comet: CometConfig,
         extra: dict[str, Any] | None = None, overwrite: bool = False) -> None:
    """Save a whole in-memory parameter tree (atomically)."""
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        writer = StreamingWriter(tmp)
        for path, value in flatten(jax.device_get(params)).items():
            writer.write(path, value)
        writer.finalize()
        write_meta(tmp, model, comet, extra)


def load_params(directory: str | os.PathLike, shardings: Any = None) -> dict[str, Any]:
    """The parameter tree; with `shardings` (a pytree of jax.sharding.Sharding matching the
    parameters) each leaf is restored directly onto its devices."""
    item = Path(directory).absolute() / PARAMS_DIR / ITEM_DIR
    if not item.exists():
        raise CheckpointError(f"{item} is missing: the checkpoint is incomplete")
    abstract = None
    if shardings is not None:
        abstract = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s),
                                _tree_metadata(item), shardings)
    ckptr = _checkpointer()
    try:
        return ckptr.restore(item, abstract)
    finally:
        ckptr.close()


def load(directory: str | os.PathLike, shardings: Any = None):
    """(params, ModelConfig, CometConfig, meta dict)."""
    model, comet, meta = read_meta(directory)
    return load_params(directory, shardings), model, comet, meta
