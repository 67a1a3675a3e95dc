"""Activation recompute policies (`model.remat`): what the backward pass keeps of the forward.

- full: keep only each scanned step's inputs and recompute everything else (least memory;
  every matmul runs twice);
- dots: also keep the outputs of matmuls without batch dimensions (the projections and the
  MLP), so only the cheap elementwise work and attention are recomputed (more memory, faster);
- none: keep everything (no recompute).

`True` / `False` (the older boolean setting) mean full / none."""

from __future__ import annotations

from typing import Callable

import jax

from comet_jax.config import REMATS


def policy_name(remat: bool | str) -> str:
    if remat is True:
        return "full"
    if remat is False:
        return "none"
    if remat not in REMATS:
        raise ValueError(f"model.remat must be one of {', '.join(REMATS)}, got {remat!r}")
    return remat


def checkpointed(fn: Callable, remat: bool | str) -> Callable:
    """`fn` wrapped for the backward pass as `remat` says (see the module docstring)."""
    name = policy_name(remat)
    if name == "none":
        return fn
    if name == "dots":
        return jax.checkpoint(fn, policy=jax.checkpoint_policies.dots_with_no_batch_dims_saveable)
    return jax.checkpoint(fn)
