"""Which HF tensors an export writes, under which names (per layout), and their contents as
a stream of contiguous pieces read a slab at a time.

Layouts (docs/guide/export.md):
- `plain`: a Llama / Qwen3 directory without memory (memory nets refused unless dropped);
- `official`: the official CoMeT layout, MemQwen3ForCausalLM (docs/design.md §1.8), Qwen3 only;
- `native`: any backbone; the plain names for the backbone, the memory nets under the
  official memory names (`model.layers.{i}.global_memory_net.*`, `temp_memory_net.*`) and
  the CoMeT settings in config.json under `hf_names.NATIVE_KEY`.

The vocabulary is cut to the real rows (`ModelConfig.real_vocab`): rows past them only pad
ours to a multiple of 256 and are masked out of every softmax, so a tool that loads the
export computes our distribution exactly. Tensors are listed leaf by leaf (every layer of
`wq`, then every layer of `wk`, ...), the order in which a stacked leaf's chunks are read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import jax
import numpy as np

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.convert.hf_names import LAYER_NAMES, MEMORY_NAMES, TOP_NAMES, ours_to_hf
from comet_jax.export import ExportError

LAYOUTS = ("official", "native", "plain")
_TRANSPOSED = {p for p, t in (*TOP_NAMES.values(), *LAYER_NAMES.values(), *MEMORY_NAMES.values()) if t}
_MEMORY = tuple(p for p, _ in MEMORY_NAMES.values())


@dataclass(frozen=True)
class Tensor:
    name: str  # HF name
    shape: tuple[int, ...]  # torch layout
    leaf: str  # our leaf path
    layer: int | None  # on the stacked axis; None for unstacked leaves


def choose_layout(model: ModelConfig, comet: CometConfig, layout: str | None, drop_memory: bool) -> str:
    """The layout asked for (default: official for a Qwen3 with memory, plain without memory,
    native otherwise), or ExportError naming what to use instead."""
    memory = comet.has_memory
    if layout is None:
        layout = "plain" if drop_memory or not memory else "official" if model.family == "qwen3" else "native"
    if layout not in LAYOUTS:
        raise ExportError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if drop_memory and layout != "plain":
        raise ExportError(f"--drop-memory writes the plain layout; it cannot be combined with --layout {layout}")
    if layout == "official" and not memory:
        raise ExportError("--layout official needs memory nets and this model has none (G=0, stride=-1): use "
                          "--layout plain")
    if layout == "official" and model.family != "qwen3":
        raise ExportError(f"--layout official is MemQwen3ForCausalLM, Qwen3 only; this is a {model.family} model: "
                          "use --layout native (or plain)")
    if layout == "plain" and memory and not drop_memory:
        raise ExportError(f"the model has memory nets (G={comet.global_size}, stride={comet.stride}) that --layout "
                          "plain cannot hold: pass --drop-memory to leave them out, or use --layout "
                          f"{'official' if model.family == 'qwen3' else 'native'}")
    return layout


def expected_shapes(model: ModelConfig, comet: CometConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter leaf of this model and its shape (no arrays are made)."""
    from comet_jax.checkpoint import flatten
    from comet_jax.model.init import init_params

    abstract = jax.eval_shape(lambda: init_params(model, comet, jax.random.key(0)))
    return {p: tuple(x.shape) for p, x in flatten(abstract).items()}


def plan(shapes: dict[str, tuple[int, ...]], model: ModelConfig, layout: str) -> list[Tensor]:
    """The HF tensors of `layout`, in the order they are written (see the module doc)."""
    vocab = model.real_vocab
    stacked = [p for p, _ in (*LAYER_NAMES.values(), *([] if layout == "plain" else MEMORY_NAMES.values()))
               if p in shapes]
    official = layout == "official"
    out = [Tensor(ours_to_hf("embed", None), (vocab, shapes["embed"][1]), "embed", None)]
    for leaf in stacked:
        one = shapes[leaf][1:]
        hf_shape = (1, *one) if leaf == "layers.global_mem.gate" else one[::-1] if leaf in _TRANSPOSED else one
        out += [Tensor(ours_to_hf(leaf, i, official=official), hf_shape, leaf, i) for i in range(shapes[leaf][0])]
    out.append(Tensor(ours_to_hf("final_norm", None), shapes["final_norm"], "final_norm", None))
    if "lm_head" in shapes:
        out.append(Tensor(ours_to_hf("lm_head", None), (vocab, shapes["lm_head"][0]), "lm_head", None))
    return out


def pieces(tensors: list[Tensor], leaves, dtype: np.dtype) -> Iterator[tuple[Tensor, np.ndarray]]:
    """(tensor, piece) in the order of `tensors`: each piece a contiguous run of the tensor's
    rows in the HF layout, in `dtype`; a tensor's pieces together are the whole tensor."""
    by_leaf: dict[str, list[Tensor]] = {}
    for t in tensors:
        by_leaf.setdefault(t.leaf, []).append(t)
    for leaf, group in by_leaf.items():
        if group[0].layer is not None:
            yield from _stacked(group, leaves, dtype)
        else:
            yield from _rows(group[0], leaves, dtype)


def _cast(value: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(value, dtype=dtype)


def _stacked(group: list[Tensor], leaves, dtype: np.dtype) -> Iterator[tuple[Tensor, np.ndarray]]:
    by_layer = {t.layer: t for t in group}
    leaf = group[0].leaf
    for start, slab in leaves.blocks(leaf, 0):
        for j in range(slab.shape[0]):
            t = by_layer[start + j]
            value = slab[j]
            if leaf == "layers.global_mem.gate":
                value = value[None, :]  # (2D,) -> torch (1, 2D)
            elif leaf in _TRANSPOSED:
                value = value.T
            yield t, _cast(value, dtype)


def _rows(t: Tensor, leaves, dtype: np.dtype) -> Iterator[tuple[Tensor, np.ndarray]]:
    """An unstacked leaf in row blocks of the HF tensor; rows past the tensor's (vocabulary
    padding) are read, for the digest, but not written."""
    transposed = t.leaf in _TRANSPOSED  # lm_head: ours (D, V), HF (V, D): our columns are its rows
    rows = t.shape[0]
    for start, slab in leaves.blocks(t.leaf, 1 if transposed else 0):
        n = max(0, min(slab.shape[1 if transposed else 0], rows - start))
        if n:
            yield t, _cast(slab[:, :n].T if transposed else slab[:n], dtype)
