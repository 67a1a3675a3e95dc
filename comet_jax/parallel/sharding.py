"""Mesh axes and the logical sharding rules.

Axes: `data` (pure data parallel: parameters replicated), `fsdp` (data parallel with
parameters and optimizer state sharded), `tensor` (heads and MLP width), `stage` (the
pipeline of docs/design.md §1.6: chunk groups of one sequence; parameters split over it too,
see `stage_dim`). A
batch is split over data x fsdp, and its chunk axis over stage.

Parameters and activations name logical axes (comet_jax/model/schema.py: `embed`, `mlp`,
`q_heads`, `kv_heads`, `vocab`, `layers`, `batch`, ...); one rule table maps them to mesh
axes (`RULES`, overridden per run by `mesh.rules`), resolved with flax's
`logical_to_mesh_axes`, as MaxText and the flax examples do. A dimension that its mesh axis
does not divide stays replicated on it, so any small model runs on any mesh.
"""

from __future__ import annotations

import contextlib
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

AXES = ("data", "fsdp", "tensor", "stage")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axes ("" = replicated, "a,b" = over both). The hidden size is split
# over fsdp in the weights and whole in the activations; norm scales and the small memory
# nets stay whole.
RULES: dict[str, str] = {
    "batch": "data,fsdp", "embed": "fsdp", "q_heads": "tensor", "kv_heads": "tensor", "mlp": "tensor",
    "vocab": "tensor", "layers": "", "norm": "", "memory": "", "rank": "", "activation_embed": "",
}
_ACTIVE: list[dict[str, str]] = [RULES]


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


def check_rules(overrides: dict[str, str], key: str = "mesh.rules") -> dict[str, str]:
    """The rule table with `overrides` applied; ConfigError naming an unknown logical or mesh axis."""
    from comet_jax.config import ConfigError
    from comet_jax.model.schema import LOGICAL_AXES

    for logical, target in overrides.items():
        if logical not in LOGICAL_AXES:
            raise ConfigError(f"{key}.{logical}: unknown logical axis; known: {', '.join(LOGICAL_AXES)}")
        bad = [a for a in target.split(",") if a and a not in AXES]
        if bad:
            raise ConfigError(f"{key}.{logical}={target}: {bad[0]} is not a mesh axis ({', '.join(AXES)}; "
                              "empty = replicated, a,b = over both)")
    return {**RULES, **overrides}


@contextlib.contextmanager
def use_rules(overrides: dict[str, str] | None):
    """Trace under the rule table with `overrides` (activation constraints read it)."""
    _ACTIVE.append(check_rules(dict(overrides or {})))
    try:
        yield
    finally:
        _ACTIVE.pop()


@contextlib.contextmanager
def tracing(mesh: Mesh, overrides: dict[str, str] | None):
    """Trace a step for `mesh` under the rule table with `overrides`: activations are pinned
    by the rules and a kernel call is split over the mesh. Only the abstract mesh is set, so
    `mesh` may hold devices of another machine (comet-lower, comet-plan)."""
    with use_rules(overrides), jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
        yield


def _flax_rules(rules: dict[str, str]) -> tuple:
    out = []
    for logical, target in rules.items():
        axes = tuple(a for a in target.split(",") if a)
        out.append((logical, None if not axes else axes[0] if len(axes) == 1 else axes))
    return tuple(out)


def logical_spec(axes: tuple[str | None, ...], shape: tuple[int, ...], mesh, rules: dict[str, str] | None = None) -> P:
    """The PartitionSpec of an array with these logical axes: the rule table resolved by flax,
    then every mesh axis that does not divide its dimension dropped."""
    import flax.linen as nn

    spec = nn.logical_to_mesh_axes(axes, _flax_rules(rules or _ACTIVE[-1]))
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    out = []
    for dim, target in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        names = (target,) if isinstance(target, str) else tuple(target or ())
        names = tuple(a for a in names if a in sizes)
        n = int(np.prod([sizes[a] for a in names])) if names else 1
        out.append(None if not names or dim % n else names[0] if len(names) == 1 else names)
    return P(*out)


def _names(target) -> tuple[str, ...]:
    return (target,) if isinstance(target, str) else tuple(target or ())


def stage_dim(axes: tuple[str, ...], shape: tuple[int, ...], spec: P, mesh) -> int | None:
    """The dimension of a parameter that the layer pipeline (mesh.stage > 1) also splits over
    `stage`, so that no device holds a whole parameter (docs/design.md §1.6); None keeps it
    whole on every stage (a leaf no dimension of which `stage` divides). Not the stacked layer
    axis (every stage runs every layer), and the hidden size only as a last resort: the pipeline
    reassembles a layer's weights along this dimension, and doing it on the fsdp-split one would
    interleave the fsdp shards. Among the others, the largest that `stage` (times the mesh axes
    already on it) divides."""
    sizes = dict(zip(mesh.axis_names, mesh.axis_sizes))
    stages = sizes.get("stage", 1)
    if stages == 1:
        return None
    spec = tuple(spec) + (None,) * (len(shape) - len(spec))
    if any("stage" in _names(t) for t in spec):
        return None  # the rule table put it there already
    fits = [i for i, (ax, n, t) in enumerate(zip(axes, shape, spec))
            if ax != "layers" and n % (stages * int(np.prod([sizes[a] for a in _names(t)] or [1]))) == 0]
    for pool in ([i for i in fits if "fsdp" not in _names(spec[i])], fits):
        if pool:
            return max(pool, key=lambda i: shape[i])
    return None


def param_stage_dims(params: Any, mesh: Mesh, rules: dict[str, str] | None = None) -> Any:
    """stage_dim of every leaf of a parameter tree (None where it stays whole over stage)."""
    from comet_jax.model.schema import entry

    table = check_rules(rules or {}) if rules is not None else _ACTIVE[-1]

    def dim(path, x):
        axes = entry(tuple(str(getattr(k, "key", k)) for k in path)).axes
        return stage_dim(axes, x.shape, logical_spec(axes, x.shape, mesh, table), mesh)

    return jax.tree_util.tree_map_with_path(dim, params)


def param_specs(params: Any, mesh: Mesh, rules: dict[str, str] | None = None) -> Any:
    """PartitionSpecs for a parameter tree from the parameter schema's logical axes (optimizer
    states follow their parameter). With mesh.stage > 1 each leaf is also split over `stage`
    on its `stage_dim`, stage-major, so a stage's share is one contiguous block."""
    from comet_jax.model.schema import entry

    table = check_rules(rules or {}) if rules is not None else _ACTIVE[-1]

    def spec(path, x):
        axes = entry(tuple(str(getattr(k, "key", k)) for k in path)).axes
        out = logical_spec(axes, x.shape, mesh, table)
        d = stage_dim(axes, x.shape, out, mesh)
        if d is None:
            return out
        parts = list(tuple(out) + (None,) * (x.ndim - len(out)))
        parts[d] = ("stage", *_names(parts[d])) if parts[d] else "stage"
        return P(*parts)

    return jax.tree_util.tree_map_with_path(spec, params)


def constrain(x: jax.Array, axes: tuple[str | None, ...]) -> jax.Array:
    """Pin an activation's sharding by its logical axes when traced under a mesh (the trainer's
    step); a no-op without one (inference) and inside shard_map (manual axes)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or mesh.manual_axes:
        return x
    return jax.lax.with_sharding_constraint(x, logical_spec(axes, x.shape, mesh))


def shardings(specs: Any, mesh: Mesh) -> Any:
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def batch_spec(batch_axis: int, ndim: int, chunk_axis: int | None = None) -> P:
    """Split the batch dimension over data x fsdp (and a chunk axis over stage)."""
    spec: list = [None] * ndim
    spec[batch_axis] = BATCH_AXES
    if chunk_axis is not None:
        spec[chunk_axis] = "stage"
    return P(*spec)
