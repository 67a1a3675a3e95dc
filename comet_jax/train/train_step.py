"""The jitted training step: loss (CoMeT or plain backbone), gradient accumulation over
micro-batches, optimizer update. State is a plain dict {params, opt_state, step}."""

from __future__ import annotations

from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import optax

from comet_jax.config import CometConfig, ModelConfig
from comet_jax.loss import IGNORE
from comet_jax.model import backbone, comet as comet_model

COMET_KEYS = ("tokens", "valid", "positions", "labels", "first", "live")  # [N, B, ...]
FULL_KEYS = ("tokens", "lengths", "labels")  # [B, ...]


def batch_axis(mode: str) -> int:
    return 1 if mode == "comet" else 0


def token_losses(params, batch: dict[str, jnp.ndarray], model: ModelConfig, comet: CometConfig, mode: str,
                 schedule: str, remat: bool | str, pipeline_mesh=None) -> jnp.ndarray:
    """Per-token losses of one micro-batch, 0 where unlabeled: [N, B, C] (comet) or [B, T]
    (full). With a `pipeline_mesh` the chunks run as the wavefront over its `stage` axis."""
    if mode == "comet" and pipeline_mesh is not None:
        from comet_jax.parallel.pipeline import pipeline_token_losses

        return pipeline_token_losses(params, batch, model, comet, pipeline_mesh, remat=remat)
    if mode == "comet":
        return comet_model.token_losses(params, batch, model, comet, schedule, remat)
    return backbone.full_token_losses(params, batch["tokens"], batch["lengths"], batch["labels"], model, remat)


def loss_sum(params, batch: dict[str, jnp.ndarray], model: ModelConfig, comet: CometConfig, mode: str,
             schedule: str, remat: bool | str, pipeline_mesh=None) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(sum of token losses, number of labeled tokens) of one micro-batch."""
    nll = token_losses(params, batch, model, comet, mode, schedule, remat, pipeline_mesh)
    return jnp.sum(nll), jnp.sum(batch["labels"] != IGNORE)


def split_micro(batch: dict[str, Any], accum: int, axis: int) -> dict[str, Any]:
    """[.., B, ..] -> [accum, .., B/accum, ..] along the batch axis."""
    def split(x):
        b = x.shape[axis]
        x = x.reshape(*x.shape[:axis], accum, b // accum, *x.shape[axis + 1:])
        return jnp.moveaxis(x, axis, 0)

    return jax.tree.map(split, batch)


def train_step(state: dict, batch: dict, *, tx: optax.GradientTransformation, schedule_fn, model: ModelConfig,
               comet: CometConfig, mode: str, schedule: str, remat: bool | str, grad_accum: int, pipeline_mesh=None):
    """One optimizer step. The loss is the mean over every labeled token of the whole batch
    (micro-batch gradients of the summed loss are added, then divided once)."""
    keys = COMET_KEYS if mode == "comet" else FULL_KEYS
    batch = {k: batch[k] for k in keys}
    grad_fn = jax.value_and_grad(loss_sum, has_aux=True)
    args = (model, comet, mode, schedule, remat, pipeline_mesh)
    if grad_accum == 1:
        (total, count), grads = grad_fn(state["params"], batch, *args)
    else:
        micro = split_micro(batch, grad_accum, batch_axis(mode))

        def body(carry, mb):
            (s, c), g = grad_fn(state["params"], mb, *args)
            return jax.tree.map(jnp.add, carry, (s, c, g)), None

        zero = (jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32),
                jax.tree.map(jnp.zeros_like, state["params"]))
        (total, count, grads), _ = jax.lax.scan(body, zero, micro)
    denom = jnp.maximum(count, 1).astype(jnp.float32)
    grads = jax.tree.map(lambda g: g / denom, grads)
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = {"loss": total / denom, "n_tokens": count, "grad_norm": optax.global_norm(grads),
               "lr": schedule_fn(state["step"])}
    return {"params": params, "opt_state": opt_state, "step": state["step"] + 1}, metrics


def make_train_step(tx, schedule_fn, *, model, comet, mode, schedule, remat, grad_accum,
                    state_shardings=None, batch_shardings=None, pipeline_mesh=None):
    """jit the step; with shardings the state stays sharded and is donated."""
    fn = partial(train_step, tx=tx, schedule_fn=schedule_fn, model=model, comet=comet, mode=mode,
                 schedule=schedule, remat=remat, grad_accum=grad_accum, pipeline_mesh=pipeline_mesh)
    if state_shardings is None:
        return jax.jit(fn, donate_argnums=0)
    return jax.jit(fn, in_shardings=(state_shardings, batch_shardings), out_shardings=(state_shardings, None),
                   donate_argnums=0)
