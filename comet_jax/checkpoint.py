"""Our model checkpoint: an Orbax pytree plus a JSON file of configs.

    DIR/comet_jax.json   {"format": 1, "model": ModelConfig, "comet": CometConfig, ...}
    DIR/params/          Orbax (v1) pytree checkpoint of the parameter tree
    DIR/tokenizer.json   (and friends) when the source had a tokenizer

Parameters are written leaf by leaf with Orbax partial saving, so a converter never
holds the whole model in host memory. Every writer builds the checkpoint in a
temporary sibling directory and renames it into place, so an interrupted run leaves
nothing at the destination.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np

from comet_jax.config import CometConfig, ModelConfig, comet_config_from_dict, dumps, model_config_from_dict

META_FILE = "comet_jax.json"
PARAMS_DIR = "params"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    pass


def _orbax():
    # Imported lazily: orbax pulls in a lot and most callers only need the configs.
    from orbax.checkpoint.experimental import v1 as ocp

    return ocp


@contextlib.contextmanager
def atomic_dir(dst: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes `dst` only if the block succeeds."""
    dst = Path(dst).absolute()
    if dst.exists() and not overwrite:
        raise CheckpointError(f"{dst} already exists; pass --overwrite to replace it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the checkpoint is an ordinary directory
    try:
        yield tmp
        if dst.exists():
            old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
            dst.rename(old)
            tmp.rename(dst)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


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


class StreamingWriter:
    """Writes one parameter leaf at a time into DIR/params."""

    def __init__(self, directory: Path):
        self.path = Path(directory) / PARAMS_DIR
        self.ocp = _orbax()
        self.written: list[str] = []

    def write(self, path: str, value: np.ndarray) -> None:
        self.ocp.partial.save(self.path, nest({path: np.asarray(value)}))
        self.written.append(path)

    def finalize(self) -> None:
        if not self.written:
            raise CheckpointError("no parameters were written")
        self.ocp.partial.finalize(self.path)


def write_meta(directory: Path, model: ModelConfig, comet: CometConfig, extra: dict[str, Any] | None = None) -> None:
    text = dumps(model, comet, {"format": FORMAT_VERSION, **(extra or {})})
    (Path(directory) / META_FILE).write_text(text + "\n")


def read_meta(directory: str | os.PathLike) -> tuple[ModelConfig, CometConfig, dict[str, Any]]:
    directory = Path(directory)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{directory} is not a comet-jax checkpoint (no {META_FILE}); convert an HF model first with "
            "`python -m comet_jax.convert SRC DST`"
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
    ocp = _orbax()
    path = Path(directory).absolute() / PARAMS_DIR
    if not path.exists():
        raise CheckpointError(f"{path} is missing: the checkpoint is incomplete")
    if shardings is None:
        return ocp.load_pytree(path)
    meta = ocp.pytree_metadata(path).metadata
    abstract = jax.tree.map(lambda m, s: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=s), meta, shardings)
    return ocp.load_pytree(path, abstract)


def load(directory: str | os.PathLike, shardings: Any = None):
    """(params, ModelConfig, CometConfig, meta dict)."""
    model, comet, meta = read_meta(directory)
    return load_params(directory, shardings), model, comet, meta
