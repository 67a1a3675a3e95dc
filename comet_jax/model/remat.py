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

# the name every floating input of a checkpointed step carries (what `offload` moves off the chip)
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


# the name of weights a step reassembles from shards (the pipeline's): never kept for the backward
STREAMED = "streamed_weights"


def wave_checkpointed(fn: Callable, remat: bool | str) -> Callable:
    """The pipeline's wavefront step (comet_jax/parallel/pipeline.py) wrapped for the backward
    pass: whatever `remat` keeps of the chunk steps inside, except the layer weights it
    reassembled (named STREAMED), which the backward reassembles again; with `offload`, only
    the step's carry is kept, in host memory, and everything else is recomputed."""
    if policy_name(remat) == "offload":
        return jax.checkpoint(named_carry(fn), policy=offload_policy())
    return jax.checkpoint(fn, policy=jax.checkpoint_policies.save_anything_except_these_names(STREAMED))
