"""Mesh axes and sharding rules (MaxText-style logical rules, written out for our tree).

Axes: `data` (pure data parallel: parameters replicated), `fsdp` (data parallel with
parameters and optimizer state sharded), `tensor` (heads and MLP width), `stage` (the
pipeline of docs/design.md §1.6: chunk groups of one sequence; parameters replicated). A
batch is split over data x fsdp, and its chunk axis over stage. A dimension that an axis does not divide stays replicated on
that axis, so any small model runs on any mesh.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor", "stage")
BATCH_AXES = ("data", "fsdp")

# Per-layer weight dims (after the stacked layer axis): which mesh axis shards each.
LAYER_RULES: dict[str, tuple[str | None, ...]] = {
    "wq": ("fsdp", "tensor"), "wk": ("fsdp", "tensor"), "wv": ("fsdp", "tensor"), "wo": ("tensor", "fsdp"),
    "w_gate": ("fsdp", "tensor"), "w_up": ("fsdp", "tensor"), "w_down": ("tensor", "fsdp"),
}
TOP_RULES: dict[str, tuple[str | None, ...]] = {"embed": ("tensor", "fsdp"), "lm_head": ("fsdp", "tensor")}


def make_mesh(data: int = 1, fsdp: int = 1, tensor: int = 1, stage: int = 1, devices=None, slices: int = 1) -> Mesh:
    """The (data, fsdp, tensor, stage) mesh over `devices` (default: all). Devices are placed by
    their physical topology (`mesh_utils.create_device_mesh`: on a TPU the later axes, tensor
    and stage, ride the fastest links; elsewhere this is list order). With `slices` > 1 the
    data axis spans that many slices (multi-slice TPU, DCN between them): each slice holds
    data/slices of it and all of the other axes (`create_hybrid_device_mesh`)."""
    from jax.experimental import mesh_utils

    devices = list(devices if devices is not None else jax.devices())
    need = data * fsdp * tensor * stage
    if need != len(devices):
        raise ValueError(f"mesh data*fsdp*tensor*stage = {data}*{fsdp}*{tensor}*{stage} = {need} but "
                         f"{len(devices)} devices are available")
    if slices < 1 or data % slices:
        raise ValueError(f"mesh.data ({data}) must be a multiple of mesh.slices ({slices}): the data axis "
                         "spans the slices")
    shape = (data, fsdp, tensor, stage)
    if slices > 1:
        found = len({getattr(d, "slice_index", 0) for d in devices})
        if found != slices:
            raise ValueError(f"mesh.slices={slices} but the devices come from {found} slice(s)")
        grid = mesh_utils.create_hybrid_device_mesh((data // slices, fsdp, tensor, stage), (slices, 1, 1, 1),
                                                    devices, allow_split_physical_axes=True)
    elif devices[0].platform == "tpu" and len(devices) > 1:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    else:
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * 4)


def _spec(shape: tuple[int, ...], axes: tuple[str | None, ...], mesh: Mesh) -> P:
    out = []
    for dim, axis in zip(shape, axes):
        out.append(axis if axis is not None and dim % mesh.shape[axis] == 0 else None)
    return P(*out)


def param_specs(params: Any, mesh: Mesh) -> Any:
    """PartitionSpecs for a parameter tree (optimizer states follow their parameter)."""
    def spec(path, x):
        names = [str(getattr(k, "key", k)) for k in path]
        if names[0] == "layers" and len(names) == 2 and names[1] in LAYER_RULES:
            return _spec(x.shape, (None, *LAYER_RULES[names[1]]), mesh)
        if len(names) == 1 and names[0] in TOP_RULES:
            return _spec(x.shape, TOP_RULES[names[0]], mesh)
        return P()

    return jax.tree_util.tree_map_with_path(spec, params)


def shardings(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec(batch_axis: int, ndim: int, chunk_axis: int | None = None) -> P:
    """Split the batch dimension over data x fsdp (and a chunk axis over stage)."""
    spec: list = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    if chunk_axis is not None:
        spec[chunk_axis] = "stage"
    return P(*spec)
