"""Layer-level pipeline parallelism over chunk groups (docs/design.md §1.6).

One sequence's N chunks are split into P contiguous groups along the mesh axis
`stage` (device p holds chunks [p*N/P, (p+1)*N/P)); every device holds every layer.
A wavefront of L + P - 1 steps: at step t, device p runs layer l = t - p over all its
chunks in order (the layer-major inner loop, `comet_layer` over a scan of chunks),
starting from the layer-l memory that device p-1 sent at step t-1 (device 0 starts
from `init_memory`), then sends its own final layer-l memory to device p+1 with a
`ppermute`. Devices outside 0 <= l < L still compute (on a clipped layer index) but
their result is discarded with `jnp.where`: a device-dependent `lax.cond` around the
collective would deadlock. Gradients are the autodiff of this forward (the transpose
of ppermute is the reverse ppermute), so they flow the same path backwards.

Values and gradients equal `comet.token_losses(..., schedule="layer_major")`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.model import backbone
from comet_jax.model.comet import chunk_inputs, text_nll, comet_layer, init_memory
from comet_jax.model.remat import checkpointed

BATCH_KEYS = ("tokens", "valid", "positions", "labels", "first", "live")


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

    def stage(params, batch):
        # Inside: params replicated, batch arrays [N/P, B, ...] of this device's chunk group.
        b = batch["tokens"].shape[1]
        h = backbone.embed(params, batch["tokens"], model)  # [N/P, B, S, D]
        chunks = {key: batch[key] for key in ("positions", "valid", "first", "live")}
        me = jax.lax.axis_index(stage_axis)
        # Made device-varying once, outside the wavefront: the layer picked at step t
        # depends on the device, and this way the transpose sums the stacked layer
        # gradients over stages once, after the loop, not every step.
        layers = jax.tree.map(lambda x: jax.lax.pcast(x, (stage_axis,), to="varying"), params["layers"])
        # check_vma=True: memories become device-varying after the first ppermute, so the
        # scan carry must be varying from the start.
        mem0 = jax.tree.map(lambda x: jax.lax.pcast(x, (stage_axis,), to="varying"),
                            init_memory(b, model, comet))

        def chunk_step(p, mem, xs):
            h_c, c = xs
            h_c, mem = comet_layer(p, h_c, mem, chunk_inputs(c), model, comet)
            return mem, h_c

        def wave_step(carry, t):
            h_all, received = carry
            layer = t - me
            active = (layer >= 0) & (layer < num_layers)
            idx = jnp.clip(layer, 0, num_layers - 1)
            p = jax.tree.map(lambda x: jax.lax.dynamic_index_in_dim(x, idx, axis=0, keepdims=False),
                             layers)
            start = jax.tree.map(lambda a, r: jnp.where(me == 0, a, r), mem0, received)
            step = lambda mem, xs: chunk_step(p, mem, xs)
            step = checkpointed(step, remat)
            mem, h_new = jax.lax.scan(step, start, (h_all, chunks))
            h_all = jnp.where(active, h_new, h_all)
            mem = jax.tree.map(lambda new, old: jnp.where(active, new, old), mem, start)
            sent = jax.tree.map(lambda x: jax.lax.ppermute(x, stage_axis, perm), mem)
            return (h_all, sent), None

        (h, _), _ = jax.lax.scan(wave_step, (h, mem0), jnp.arange(num_layers + num_stages - 1))
        return text_nll(params, h, batch["labels"], model, comet)

    param_specs = jax.tree.map(lambda _: P(), params)
    batch_specs = {k: P(stage_axis) for k in batch}
    run = jax.shard_map(stage, mesh=mesh, in_specs=(param_specs, batch_specs), out_specs=P(stage_axis),
                        axis_names={stage_axis}, check_vma=True)
    return run(params, batch)
