"""Convert a local HF Llama / Qwen3 / official CoMeT directory into our checkpoint.

The converter streams: every shard's header is read first (names, shapes, dtypes: a bad
or truncated file, or a tensor whose shape is not the one config.json implies, is refused
before anything is written), then each parameter leaf is
written block by block (`checkpoint.StreamingWriter`), each block filled from the
tensors it needs, read one at a time from their shard (opened for that read and closed
again, so no shard stays mapped). Host memory holds about one block (32 MB, or one layer
of a stacked leaf where a layer is larger), never a whole leaf or the model. CoMeT is
added as docs/design.md §1.4 says: new token rows around the mean of the existing rows,
vocabulary padded to a multiple of 256 (padding rows masked), and fresh memory nets per
layer, unless the source is an official CoMeT checkpoint or our `native` export (its
settings under NATIVE_KEY in config.json), whose rows, ids and memory nets are kept. The
source's config.json is kept in the meta ("hf_config"), for `comet_jax.export`.
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy, so safetensors can load it)
import numpy as np
from safetensors import SafetensorError, safe_open

from comet_jax.checkpoint import StreamingWriter, atomic_dir, write_meta
from comet_jax.config import (MEMORY_RANK, CometConfig, ConfigError, ModelConfig, architecture_of,
                              comet_config_from_dict, model_config_from_hf)
from comet_jax.convert import tokenizer_files
from comet_jax.convert.hf_names import NATIVE_KEY, Target, hf_to_ours
from comet_jax.resources import peak_rss_bytes
from comet_jax.model import schema
from comet_jax.vocab import added_tokens, comet_for_vocab, padded_vocab

# Recipe defaults (docs/design.md §1.4) for a plain backbone converted without flags.
RECIPE = {"chunk_size": 2048, "global_size": 512, "stride": 8, "budget": 2048}
NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
# Test hook, not an option: seconds to sleep after each leaf, so that a test can stop a
# conversion that is certainly still in progress.
PAUSE_ENV = "COMET_JAX_CONVERT_TEST_PAUSE"


class ConvertError(RuntimeError):
    """Bad source or arguments; nothing was written."""


@dataclass
class TensorIndex:
    """Which safetensors file holds each tensor, and its shape (from the file headers)."""

    files: dict[str, Path]
    shapes: dict[str, tuple[int, ...]]

    @classmethod
    def scan(cls, src: Path) -> "TensorIndex":
        index = src / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (ValueError, KeyError, TypeError) as e:
                raise ConvertError(f"{index} is not a safetensors index ({type(e).__name__}: {e})") from None
            files = {name: src / f for name, f in weight_map.items()}
            missing = sorted({str(p) for p in files.values() if not p.is_file()})
            if missing:
                raise ConvertError(f"{index} lists {missing[0]}, which does not exist")
            shards = sorted(set(files.values()))
        else:
            shards = sorted(src.glob("*.safetensors"))
            if not shards:
                raise ConvertError(f"no *.safetensors files in {src} (PyTorch .bin checkpoints are not supported)")
            files = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for shard in shards:
            with _open(shard) as f:
                for name in f.keys():
                    if index.is_file() and files.get(name) != shard:
                        continue  # with an index, only what it lists, where it lists it
                    files[name] = shard
                    shapes[name] = tuple(f.get_slice(name).get_shape())
        absent = sorted(set(files) - set(shapes))
        if absent:
            raise ConvertError(f"{index} puts {absent[0]} in {files[absent[0]]}, which does not hold it")
        return cls(files, shapes)

    def read(self, name: str, index: tuple = ()) -> np.ndarray:
        """The tensor, or the part of it that `index` (a tuple of slices) selects."""
        with _open(self.files[name]) as f:
            try:
                return f.get_slice(name)[index] if index else f.get_tensor(name)
            except SafetensorError as e:
                raise ConvertError(f"{self.files[name]}: cannot read {name}: {e}") from None


class _open:
    """safe_open that reports an unreadable file (truncated, not safetensors) as a ConvertError."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        try:
            self.handle = safe_open(self.path, framework="numpy")
        except (SafetensorError, OSError) as e:
            raise ConvertError(f"{self.path} is not a readable safetensors file ({e})") from None
        return self.handle.__enter__()

    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)


def grow_rows(old: np.ndarray, n_new: int, rng: np.random.Generator) -> np.ndarray:
    """n_new rows drawn from N(mean, 1e-5 * covariance) of the existing rows (as HF's
    mean-resizing does), so new tokens start as 'average' tokens."""
    return grow_rows_from(lambda: iter([old]), n_new, rng, old.dtype)


def grow_rows_from(blocks: Callable[[], Iterator[np.ndarray]], n_new: int, rng: np.random.Generator,
                   dtype: Any = None) -> np.ndarray:
    """`grow_rows` over the existing rows given in blocks (each call of `blocks()` is one
    pass: the mean, then the covariance, in float64), so a large embedding is never copied
    whole. With a single block the numbers are exactly those of one pass over all rows. The
    new rows have `dtype`, by default the source's."""
    total, n = None, 0
    for block in blocks():
        dtype = block.dtype if dtype is None else dtype
        s = block.astype(np.float64).sum(axis=0)
        total, n = (s if total is None else total + s), n + len(block)
    mean = total / n
    cov = None
    for block in blocks():
        centered = block.astype(np.float64)
        centered -= mean
        if cov is None:
            cov = centered.T @ centered
        else:
            cov += centered.T @ centered
        del centered
    cov /= max(n - 1, 1)
    cov *= 1e-5
    eigval, eigvec = np.linalg.eigh(cov)
    del cov
    eigvec *= np.sqrt(np.clip(eigval, 0.0, None))
    return (mean + rng.standard_normal((n_new, len(mean))) @ eigvec.T).astype(dtype)


def _comet_from_official(cfg: dict[str, Any]) -> CometConfig:
    try:
        ids = tuple(int(i) for i in cfg.get("global_beacon_ids") or ())
        return CometConfig(
            chunk_size=int(cfg["chunk_size"]), global_size=len(ids), stride=int(cfg["temp_beacon_stride"]),
            budget=int(cfg.get("temp_mem_budget") or 0), placeholder_id=int(cfg["placeholder_id"]),
            temp_beacon_id=int(cfg.get("temp_beacon_id", -1)), global_beacon_ids=ids)
    except KeyError as e:
        raise ConvertError(f"official CoMeT config.json lacks {e.args[0]!r}") from None


def _comet_from_native(cfg: dict[str, Any]) -> CometConfig:
    """The settings our `native` export layout writes under NATIVE_KEY (docs/guide/export.md)."""
    settings = cfg[NATIVE_KEY]
    try:
        return comet_config_from_dict({k: v for k, v in settings.items() if k != "format"})
    except (ConfigError, TypeError, AttributeError) as e:
        raise ConvertError(f"config.json: {NATIVE_KEY} is not a set of CoMeT settings ({e})") from None


def _expected_layer_leaves(model: ModelConfig) -> list[str]:
    """The backbone's stacked leaves (from the parameter schema), which every source must have."""
    return [path for path, (leaf, _) in schema.leaves(model, CometConfig()).items()
            if path.startswith("layers.") and leaf.group == "base"]


def memory_leaf_shapes(model: ModelConfig, comet: CometConfig) -> dict[str, tuple[int, ...]]:
    """Shapes (one layer) of the memory-net leaves that this CoMeT config needs (the schema's)."""
    return {path: shape[1:] for path, (leaf, shape) in schema.leaves(model, comet).items() if leaf.group == "memory"}


def init_memory_leaf(path: str, shape: tuple[int, ...], num_layers: int, std: float,
                     rng: np.random.Generator) -> np.ndarray:
    """Norm scales start at 1, linear weights N(0, initializer_range) (docs/design.md §1.4)."""
    if schema.entry(path).init == "ones":
        return np.ones((num_layers, *shape), np.float32)
    return (rng.standard_normal((num_layers, *shape)) * std).astype(np.float32)


def check_destination(src: Path, dst: Path, overwrite: bool, error: type[Exception] = ConvertError) -> None:
    """DST must not be SRC, lie inside it or (with --overwrite, which deletes DST) contain it."""
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise error(f"DST {dst} is the source directory or inside it; choose another destination")
    if d in s.parents:
        raise error(f"SRC {src} is inside DST {dst}; replacing DST would delete the source")
    if dst.exists() and not overwrite:
        raise error(f"{dst} already exists; pass --overwrite to replace it")


def read_hf_config(path: Path) -> dict[str, Any]:
    """The source's config.json as a dict; a file that is not a JSON object is named in one line."""
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConvertError(f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno}") from None
    except UnicodeDecodeError as e:
        raise ConvertError(f"{path} is not valid JSON: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConvertError(f"cannot read {path}: {e.strerror or e}") from None
    if not isinstance(cfg, dict):
        raise ConvertError(f"{path} is not a JSON object (it holds a {type(cfg).__name__})")
    return cfg


# The config.json settings behind each symbolic dimension of the parameter schema, and the
# setting a tensor's size along that dimension implies (None: no single setting does).
_DIM_SETTINGS: dict[str, tuple[str, ...]] = {
    "D": ("hidden_size",), "2D": ("hidden_size",), "F": ("intermediate_size",), "V": ("vocab_size",),
    "hd": ("head_dim",), "HQ": ("num_attention_heads", "head_dim"), "HKV": ("num_key_value_heads", "head_dim"),
    "r": (), "1": ()}


def _fit(dim: str, n: int) -> str:
    """What config.json would have to say for a tensor of size n along `dim`."""
    if dim == "2D":
        return f"hidden_size={n // 2}" if n % 2 == 0 else f"hidden_size={n}/2"
    if dim in ("HQ", "HKV"):
        return f"{'*'.join(_DIM_SETTINGS[dim])}={n}"
    if dim == "r":
        return f"a memory-net rank of {n} (comet_jax has {MEMORY_RANK}, config.MEMORY_RANK)"
    return f"{_DIM_SETTINGS[dim][0]}={n}"


def check_tensor_shapes(index: TensorIndex, targets: dict[str, Target], model: ModelConfig, comet: CometConfig,
                        arch: str) -> None:
    """Every tensor must have exactly the shape that config.json implies (the parameter schema's
    shape for `model`, as config.json gives it, in torch's layout) and belong to one of its
    num_hidden_layers layers; the first that does not is refused in one line that names its
    file, the settings involved and the values the tensor fits. Memory-net tensors whose net
    this CoMeT config turns off (--global-size 0, --stride -1) are not needed and not checked."""
    expected = schema.leaves(model, comet)
    values = {"hidden_size": model.hidden_size, "intermediate_size": model.intermediate_size,
              "vocab_size": model.vocab_size, "num_attention_heads": model.num_heads,
              "num_key_value_heads": model.num_kv_heads, "head_dim": model.head_dim}
    order = list(schema.LEAVES)  # the unstacked leaves first, then layer by layer, in the schema's order
    names = sorted(targets, key=lambda n: (-1 if targets[n].layer is None else targets[n].layer,
                                           order.index(targets[n].path)))
    beyond = [n for n in names if targets[n].layer is not None and targets[n].layer >= model.num_layers]
    if beyond:
        layers = sorted({targets[n].layer for n in beyond})
        span = f"layer {layers[0]}" if len(layers) == 1 else f"layers {layers[0]}-{layers[-1]}"
        more = f" (and {len(beyond) - 1} more, for {span})" if len(beyond) > 1 else ""
        raise ConvertError(
            f"{index.files[beyond[0]]}: tensor {beyond[0]}{more} is beyond the model's layers: config.json "
            f"(num_hidden_layers={model.num_layers}) implies {_layers(model.num_layers)}; the tensors fit "
            f"num_hidden_layers={layers[-1] + 1}: correct config.json (or remove the extra tensors)")
    for name in names:
        target, shape = targets[name], index.shapes[name]
        if target.path not in expected:
            if schema.entry(target.path).group == "memory" or target.path == "lm_head":
                continue  # a memory net turned off, or a tied head's copy: not read
            raise ConvertError(f"{index.files[name]}: tensor {name} has no place in a {arch} with config.json's "
                               f"settings (it is {target.path}); remove it or correct config.json")
        leaf, ours = expected[target.path]
        dims, want = leaf.dims, ours
        if target.layer is not None:
            dims, want = dims[1:], want[1:]
        if target.transpose:
            dims, want = dims[::-1], want[::-1]
        if target.path == "layers.global_mem.gate":  # (1, 2D) in torch; a flat (2D,) is read the same
            if shape == want:
                continue
            dims, want = ("1", *dims), (1, *want)
        if shape == want:
            continue
        settings = dict.fromkeys(s for d in dims for s in _DIM_SETTINGS[d])
        said = ", ".join(f"{s}={values[s]}" for s in settings) or "the CoMeT layout"
        fits = ([_fit(d, n) for d, n, w in zip(dims, shape, want) if n != w and d != "1"]
                if len(shape) == len(want) else [])
        fix = (f"; the tensor fits {', '.join(fits)}: correct config.json" if fits
               else "; correct config.json or the tensors")
        raise ConvertError(f"{index.files[name]}: tensor {name} has shape {shape}, config.json ({said}) "
                           f"implies {want}{fix}")


def _layers(n: int) -> str:
    return "layer 0" if n == 1 else f"layers 0-{n - 1}"


class _io_errors:
    """An OSError while DST is written becomes one line that says which side failed: `cannot
    write DST: reason`, or `cannot read FILE: reason` for a file of SRC (a tokenizer file)."""

    def __init__(self, src: Path, dst: Path):
        self.src, self.dst = src.absolute(), dst

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, e, tb) -> bool:
        if kind is None or not issubclass(kind, OSError):
            return False
        reason = e.strerror or str(e) or kind.__name__
        if e.filename is not None:
            f = Path(os.fsdecode(e.filename)).absolute()
            if f == self.src or self.src in f.parents:
                raise ConvertError(f"cannot read {f}: {reason}") from None
            reason = f"{reason} ({f})"
        raise ConvertError(f"cannot write {self.dst}: {reason}") from None


def _write_vocab_leaf(writer: StreamingWriter, leaf: str, name: str, transpose: bool, index: TensorIndex,
                      new_rows: np.ndarray, np_dtype: Any) -> tuple[int, ...]:
    """embed / lm_head: the source's rows, then `new_rows`, in blocks of the writer's choosing
    (rows of embed, columns of our transposed lm_head)."""
    src_vocab, d = index.shapes[name]
    vocab = src_vocab + len(new_rows)
    shape = (d, vocab) if transpose else (vocab, d)
    out = writer.leaf(leaf, shape, np_dtype)
    for block in out.blocks():
        ours = (out.index(block) + (slice(None),) * 2)[:2]
        rows, cols = ours[::-1] if transpose else ours
        r0, r1, _ = rows.indices(vocab)
        parts = []
        if r0 < src_vocab:
            parts.append(index.read(name, (slice(r0, min(r1, src_vocab)), cols)))
        if r1 > src_vocab:
            parts.append(new_rows[max(r0, src_vocab) - src_vocab:r1 - src_vocab, cols])
        value = np.concatenate(parts) if len(parts) > 1 else parts[0]
        out.write(block, (value.T if transpose else value).astype(np_dtype, copy=False))
        del value, parts
    return shape


def _write_stacked_leaf(writer: StreamingWriter, leaf: str, layers: dict[int | None, tuple[str, bool]],
                        shape: tuple[int, ...], index: TensorIndex, np_dtype: Any) -> None:
    """A (num_layers, ...) leaf, one block of layers at a time, each layer read when needed."""
    out = writer.leaf(leaf, (len(layers), *shape), np_dtype)
    for block in out.blocks():
        buf = np.empty((block.stop - block.start, *shape), np_dtype)
        for j, layer in enumerate(range(block.start, block.stop)):
            name, transpose = layers[layer]
            value = index.read(name)
            buf[j] = (value.T if transpose else value).reshape(shape)
            del value
        out.write(block, buf)
        del buf


def convert(src: str | os.PathLike, dst: str | os.PathLike, *, chunk_size: int | None = None,
            global_size: int | None = None, stride: int | None = None, budget: int | None = None,
            dtype: str | None = None, overwrite: bool = False, seed: int = 0,
            log: Callable[[str], None] = print) -> dict[str, Any]:
    """Convert SRC (an HF directory) into our checkpoint at DST. Returns a summary dict."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ConvertError(f"source directory {src} does not exist")
    check_destination(src, dst, overwrite)
    cfg_path = src / "config.json"
    if not cfg_path.is_file():
        raise ConvertError(f"{cfg_path} is missing: SRC must be a Hugging Face model directory")
    hf_cfg = read_hf_config(cfg_path)
    try:
        arch = architecture_of(hf_cfg)
        official = arch == "MemQwen3ForCausalLM"
        # an official checkpoint or our native export: settings, token rows and memory nets are the source's
        keeps = official or NATIVE_KEY in hf_cfg
        if dtype is None:
            dtype = str(hf_cfg.get("dtype") or hf_cfg.get("torch_dtype") or "float32")
            dtype = dtype if dtype in ("float32", "bfloat16") else "float32"
        if dtype not in ("float32", "bfloat16"):
            raise ConfigError(f"--dtype must be float32 or bfloat16, got {dtype!r}")
        model = model_config_from_hf(hf_cfg, param_dtype=dtype)
    except ConfigError as e:
        raise ConvertError(str(e)) from None

    src_vocab = model.vocab_size
    src_model = model  # what config.json says: the tensors must have exactly its shapes
    if keeps:
        comet = _comet_from_official(hf_cfg) if official else _comet_from_native(hf_cfg)
        if global_size is not None and global_size != comet.global_size:
            raise ConvertError("--global-size cannot change a CoMeT checkpoint's G (its beacon rows are trained)")
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

    # Map every tensor, and check every shape, before writing anything: a bad source fails early.
    index = TensorIndex.scan(src)
    targets: dict[str, Target] = {}
    by_leaf: dict[str, dict[int | None, tuple[str, bool]]] = defaultdict(dict)
    for name in index.files:
        try:
            target = hf_to_ours(name)
        except KeyError as e:
            raise ConvertError(f"{src}: {e.args[0]}") from None
        if target is not None:
            targets[name] = target
            by_leaf[target.path][target.layer] = (name, target.transpose)
    memory_shapes = memory_leaf_shapes(model, comet)
    stray = sorted(leaf for leaf in by_leaf if leaf.startswith(("layers.global_mem.", "layers.temp_mem.")))
    if stray and not keeps:
        # fresh memory nets would silently replace trained ones
        raise ConvertError(f"{src}: it has CoMeT memory-net tensors ({stray[0]}) but config.json has no CoMeT "
                           f"settings (the official keys, or {NATIVE_KEY!r})")
    check_tensor_shapes(index, targets, src_model, comet, arch)
    required = _expected_layer_leaves(model) + (list(memory_shapes) if keeps else [])
    layer_shapes = {path: shape[1:] for path, (_, shape) in schema.leaves(model, comet).items()}
    for leaf in required:
        have = by_leaf.get(leaf, {})
        for layer in range(model.num_layers):
            if layer not in have:
                raise ConvertError(f"{src}: no tensor for {leaf} of layer {layer}")
    top = ["embed", "final_norm"] + ([] if model.tie_embeddings else ["lm_head"])
    for leaf in top:
        if None not in by_leaf.get(leaf, {}):
            raise ConvertError(f"{src}: no tensor for {leaf} (tie_word_embeddings={model.tie_embeddings})")

    np_dtype = NP_DTYPES[dtype]
    rng = np.random.default_rng(seed)
    pause = float(os.environ.get(PAUSE_ENV) or 0)
    # imported before the temporary exists: a signal during its initialisation would surface
    # as an ImportError instead of the clean stop below
    import tensorstore  # noqa: F401

    # an OSError (an unwritable DST, a full disk) comes after atomic_dir removed the temporary
    with _io_errors(src, dst), atomic_dir(dst, overwrite=overwrite) as tmp:
        writer = StreamingWriter(tmp)

        def done(leaf: str, shape: tuple[int, ...], note: str = "") -> None:
            log(f"  {leaf:28s} {tuple(shape)}{note}")
            if pause:
                time.sleep(pause)

        for leaf in top:
            name, transpose = by_leaf[leaf][None]
            if leaf == "final_norm":
                value = index.read(name).astype(np_dtype)
                writer.write(leaf, value)
                done(leaf, value.shape)
                continue
            new_rows = np.zeros((0, index.shapes[name][1]), np.float32)
            if new_vocab > src_vocab:
                step = max(1, writer.block_bytes // (8 * index.shapes[name][1]))  # a block in float64

                def row_blocks(name=name, step=step):
                    return (index.read(name, (slice(a, min(a + step, src_vocab)),)) for a in range(0, src_vocab, step))

                new_rows = grow_rows_from(row_blocks, new_vocab - src_vocab, rng)
            done(leaf, _write_vocab_leaf(writer, leaf, name, transpose, index, new_rows, np_dtype))
        for leaf in required:
            _write_stacked_leaf(writer, leaf, by_leaf[leaf], layer_shapes[leaf], index, np_dtype)
            done(leaf, (model.num_layers, *layer_shapes[leaf]))
        if not keeps:
            for i, (leaf, shape) in enumerate(memory_shapes.items()):
                leaf_rng = np.random.default_rng([seed, i])
                value = init_memory_leaf(leaf, shape, model.num_layers, model.initializer_range, leaf_rng)
                writer.write(leaf, value.astype(np_dtype))
                done(leaf, value.shape, " (new)")
        writer.finalize()
        tok = tokenizer_files.copy_with_comet_tokens(src, tmp, comet, added=not keeps)
        # the source's config.json, so that an export can give back every field we do not model
        extra = {"source": {"path": str(src.absolute()), "architecture": arch, "vocab_size": src_vocab},
                 "tokenizer": tok, "hf_config": hf_cfg}
        max_pos = hf_cfg.get("max_position_embeddings")
        if isinstance(max_pos, int) and not isinstance(max_pos, bool):
            extra["max_position_embeddings"] = max_pos
        write_meta(tmp, model, comet, extra)
    summary = {"dst": str(dst.absolute()), "architecture": arch, "vocab_size": new_vocab,
               "num_real_tokens": real_vocab, "added_tokens": n_added, "dtype": dtype,
               "peak_rss_mb": round(peak_rss_bytes() / 2**20, 1), "tokenizer": tok,
               "comet": {k: v for k, v in comet.__dict__.items() if k != "global_beacon_ids"}}
    return summary
