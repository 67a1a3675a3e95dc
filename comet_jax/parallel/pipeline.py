"""Layer-level pipeline parallelism over chunk groups (docs/design.md §1.6).

One sequence's N chunks are split into P contiguous groups along the mesh axis `stage`
(device p holds chunks [p*N/P, (p+1)*N/P)). A wavefront of L + P - 1 steps: at step t,
device p runs layer l = t - p over all its chunks in order (the layer-major inner loop,
`comet_layer` over a scan of chunks), starting from the layer-l memory that device p-1 sent
at step t-1 (device 0 starts from `init_memory`), then sends its own final layer-l memory to
device p+1 with a `ppermute`. Devices outside 0 <= l < L still compute (on a clipped layer
index) but their result is discarded with `jnp.where`: a device-dependent `lax.cond` around
the collective would deadlock.

Parameters are split over `stage` as well (`sharding.stage_dim`: one dimension per leaf), so
no device holds a whole parameter, gradient or optimizer moment. At step t every device needs
a different layer (t - p), so the layer's weights are reassembled with one `all_to_all`:
device q sends device p its block of layer t - p. Its transpose sends the gradient blocks
back to their owners, so each device accumulates only its own block. The reassembled
weights are never kept for the backward pass: the step is rematerialised around them
(`remat.wave_checkpointed`), which re-runs the all_to_all instead. The embedding and head,
used by every device at once, are all_gathered (transpose: psum_scatter).

The shard_map does not check varying axes (`check_vma=False`): a Pallas kernel (splash
attention) inside it has no typed gradient otherwise. Values and gradients equal
`comet.token_losses(..., schedule="layer_major")`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import Mesh, PartitionSpec as P

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.model import backbone
from comet_jax.model.comet import chunk_inputs, text_nll, comet_layer, init_memory
from comet_jax.model.remat import CHUNK_INPUT, STREAMED, checkpointed, split_policy, wave_checkpointed
from comet_jax.parallel.sharding import param_stage_dims

BATCH_KEYS = ("tokens", "valid", "positions", "labels", "first", "live")


def _spec(dim: int | None, ndim: int, axis: str) -> P:
    return P() if dim is None else P(*[axis if i == dim else None for i in range(ndim)])


def pipeline_token_losses(params: dict, batch: dict[str, Any], model: ModelConfig, comet: CometConfig,
                          mesh: Mesh, stage_axis: str = "stage", remat: bool | str = True) -> jnp.ndarray:
    """Per-token loss [N, B, C] (0 where unlabeled), the chunk axis sharded over `stage_axis`."""
    num_stages = mesh.shape[stage_axis]
    num_layers = model.num_layers
    params = backbone.cast_params(params, model.dtype)
    batch = {k: jnp.asarray(batch[k]) for k in BATCH_KEYS}
    n = batch["tokens"].shape[0]
    if n % num_stages:
        raise ValueError(f"pipeline: the number of chunks N={n} is not divisible by the {num_stages} stages of "
                         f"mesh axis {stage_axis!r}; pad with fully masked chunks "
                         f"(layout.build(..., num_chunks=...)) to a multiple of {num_stages}")
    perm = [(i, i + 1) for i in range(num_stages - 1)]
    dims = param_stage_dims(params, mesh)
    _, inner = split_policy(remat)

    def gather(x, d):
        return x if d is None else jax.lax.all_gather(x, stage_axis, axis=d, tiled=True)

    def stage(params, batch):
        # Inside: each parameter leaf is this device's block along its stage dim (whole where
        # that is None); batch arrays are [N/P, B, ...] of this device's chunk group.
        b = batch["tokens"].shape[1]
        top = {k: jax.tree.map(gather, params[k], dims[k]) for k in params if k != "layers"}
        h = backbone.embed(top, batch["tokens"], model)  # [N/P, B, S, D]
        chunks = {key: batch[key] for key in ("positions", "valid", "first", "live")}
        me = jax.lax.axis_index(stage_axis)
        mem0 = init_memory(b, model, comet)

        def layer_at(t):
            """The weights of layer t - me, whole (over stage)."""
            wanted = jnp.clip(t - jnp.arange(num_stages), 0, num_layers - 1)  # the layer of each device

            def one(x, d):
                if d is None:
                    return jax.lax.dynamic_index_in_dim(x, wanted[me], axis=0, keepdims=False)
                blocks = jnp.take(x, wanted, axis=0)  # [P, ...]: my block of every device's layer
                whole = jax.lax.all_to_all(blocks, stage_axis, split_axis=0, concat_axis=d, tiled=True)
                return whole[0]

            return checkpoint_name(jax.tree.map(one, params["layers"], dims["layers"]), STREAMED)

        def wave_step(carry, t):
            h_all, received = carry
            layer = t - me
            active = (layer >= 0) & (layer < num_layers)
            p = layer_at(t)
            start = jax.tree.map(lambda a, r: jnp.where(me == 0, a, r), mem0, received)

            def chunk_step(mem, xs):
                h_c, c = xs
                h_c, mem = comet_layer(p, h_c, mem, chunk_inputs(c), model, comet)
                return mem, h_c

            def named_step(mem, xs):
                (mem, h_c), c = checkpoint_name((mem, xs[0]), CHUNK_INPUT), xs[1]
                return checkpointed(chunk_step, inner)(mem, (h_c, c))

            mem, h_new = jax.lax.scan(named_step, start, (h_all, chunks))
            h_all = jnp.where(active, h_new, h_all)
            mem = jax.tree.map(lambda new, old: jnp.where(active, new, old), mem, start)
            sent = jax.tree.map(lambda x: jax.lax.ppermute(x, stage_axis, perm), mem)
            return (h_all, sent), None

        steps = jnp.arange(num_layers + num_stages - 1)
        (h, _), _ = jax.lax.scan(wave_checkpointed(wave_step, remat), (h, mem0), steps)
        return text_nll(top, h, batch["labels"], model, comet)

    param_specs = jax.tree.map(lambda d, x: _spec(d, x.ndim, stage_axis), dims, params,
                               is_leaf=lambda d: d is None or isinstance(d, int))
    batch_specs = {k: P(stage_axis) for k in batch}
    run = jax.shard_map(stage, mesh=mesh, in_specs=(param_specs, batch_specs), out_specs=P(stage_axis),
                        axis_names={stage_axis}, check_vma=False)
    return run(params, batch)
