"""Activation recompute policies (`model.remat`): what the backward pass keeps of the forward.

- full: keep only each scanned step's inputs and recompute everything else (least memory;
  every matmul runs twice);
- dots: also keep the outputs of matmuls without batch dimensions (the projections and the
  MLP), so only the cheap elementwise work and attention are recomputed (more memory, faster);
- offload: as full, but the step inputs (for CoMeT the layer-boundary hidden states and
  memories of every chunk) are kept in host memory (`pinned_host`), not on the chip: the
  backward copies each back when it reaches that step. Needs a platform with host memory
  spaces (TPU, GPU); the values are those of full;
- none: keep everything (no recompute).

`True` / `False` (the older boolean setting) mean full / none."""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name

from comet_jax.config import REMATS

# the name the floating arrays of a checkpointed step's carry take (what `offload` moves off the chip)
STEP_INPUT = "step_input"


def policy_name(remat: bool | str) -> str:
    if remat is True:
        return "full"
    if remat is False:
        return "none"
    if remat not in REMATS:
        raise ValueError(f"model.remat must be one of {', '.join(REMATS)}, got {remat!r}")
    return remat


def offload_policy():
    return jax.checkpoint_policies.save_and_offload_only_these_names(
        names_which_can_be_saved=[], names_which_can_be_offloaded=[STEP_INPUT],
        offload_src="device", offload_dst="pinned_host")


def named_carry(fn: Callable) -> Callable:
    """`fn(carry, xs)` with every floating array of the carry named STEP_INPUT: under the offload
    policy the backward reads the named copy from host memory instead of keeping the carry on
    the chip. The scanned inputs (the layer's weights, the chunk layout) are not named: they are
    stored already."""
    def name(x):
        return checkpoint_name(x, STEP_INPUT) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x

    def run(carry, *xs):
        return fn(jax.tree.map(name, carry), *xs)

    return run


def checkpointed(fn: Callable, remat: bool | str) -> Callable:
    """`fn` wrapped for the backward pass as `remat` says (see the module docstring)."""
    name = policy_name(remat)
    if name == "none":
        return fn
    if name == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    if name == "offload":
        return jax.checkpoint(named_carry(fn), policy=offload_policy())
    return jax.checkpoint(fn)


def split_policy(remat: bool | str) -> tuple[str, bool | str]:
    """(policy of the outer step, policy of the steps inside it) for a schedule that nests one
    scan in another. Offloading works on one level of steps only (the TPU compiler refuses a
    host copy of a residual stacked by two nested loops), so `offload` moves the outer steps'
    inputs to host memory and recomputes the inner ones fully; every other policy applies to
    the inner steps alone, as it always has."""
    if policy_name(remat) == "offload":
        return "offload", "full"
    return "none", remat


# the names the pipeline's wavefront step gives the weights it reassembles from shards (never
# kept for the backward: reassembled again) and the inputs of its chunk steps (kept)
STREAMED = "streamed_weights"
CHUNK_INPUT = "chunk_input"


def wave_checkpointed(fn: Callable, remat: bool | str) -> Callable:
    """The pipeline's wavefront step (comet_jax/parallel/pipeline.py) wrapped for the backward
    pass. Whatever the policy, the layer weights it reassembled (named STREAMED) are not kept:
    the backward reassembles them again. full / dots keep the inputs of its chunk steps (named
    CHUNK_INPUT; dots also the matmul outputs), none keeps everything else, and offload keeps
    only the step's carry, in host memory. The outer policy decides for the steps inside too
    (an inner checkpoint cannot recompute what an outer policy keeps), so each is spelled out."""
    name = policy_name(remat)
    cp = jax.checkpoint_policies
    if name == "offload":
        return checkpointed(fn, "offload")
    if name == "none":
        return jax.checkpoint(fn, policy=cp.save_anything_except_these_names(STREAMED))
    keep = cp.save_only_these_names(CHUNK_INPUT)
    if name == "dots":
        keep = cp.save_from_both_policies(keep, cp.dots_with_no_batch_dims_saveable)
    return jax.checkpoint(fn, policy=keep)
