"""The optimizer: AdamW with a warm-up + cosine schedule, gradient clipping, weight decay
that skips norms and vectors, and a learning-rate multiplier for the memory nets
(the official recipe trains them at 5x the base rate, docs/design.md §1.4)."""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from comet_jax.model import schema


def lr_schedule(lr: float, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0,
                decay_steps: int = 0) -> optax.Schedule:
    """Linear warm-up from 0 to lr, then cosine decay to lr * min_lr_ratio at total_steps.
    decay_steps > 0: warm-up, the rate held at lr, then the cosine over the last decay_steps
    steps only (warm-up / stable / decay: the rate stays high for most of the run)."""
    warmup = max(0, min(warmup_steps, total_steps))
    if decay_steps <= 0:
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0, peak_value=lr, warmup_steps=warmup, decay_steps=max(total_steps, warmup + 1),
            end_value=lr * min_lr_ratio)
    start = max(warmup, total_steps - decay_steps)
    parts = [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr),
             optax.cosine_decay_schedule(lr, max(total_steps - start, 1), alpha=min_lr_ratio)]
    return optax.join_schedules(parts, [warmup, start])


def _path_names(path) -> tuple[str, ...]:
    return tuple(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def param_groups(params: Any) -> Any:
    """Each leaf's learning-rate group from the parameter schema: 'memory' for the memory
    nets, 'base' for everything else."""
    return jax.tree_util.tree_map_with_path(lambda path, _: schema.entry(_path_names(path)).group, params)


def decay_mask(params: Any) -> Any:
    """Weight decay on matrices only (the schema's `decay`): not on norm scales or the gate vector."""
    return jax.tree_util.tree_map_with_path(lambda path, _: schema.entry(_path_names(path)).decay, params)


class EmaState(NamedTuple):
    ema: Any  # the moving average, shaped (and sharded) as the parameters


def param_ema(decay: float) -> optax.GradientTransformation:
    """Passes the updates through and keeps ema <- decay * ema + (1 - decay) * (params + updates):
    the average of the parameters each step leaves (it starts at the initial ones)."""

    def init(params):
        return EmaState(jax.tree.map(jnp.array, params))

    def update(updates, state, params=None):
        if params is None:
            raise ValueError("param_ema needs the parameters: call update(grads, state, params)")
        ema = jax.tree.map(lambda e, p, u: decay * e + (1 - decay) * (p + u).astype(e.dtype), state.ema, params, updates)
        return updates, EmaState(ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any:
    """The moving average of the parameters kept by `param_ema` in an optimizer state."""
    found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, EmaState)) if isinstance(s, EmaState)]
    if len(found) != 1:
        raise ValueError(f"the optimizer state holds {len(found)} parameter averages, not one (optim.ema > 0 makes one)")
    return found[0].ema


def make_optimizer(params: Any, *, lr: float, total_steps: int, warmup_steps: int = 10,
                   min_lr_ratio: float = 0.0, decay_steps: int = 0, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   weight_decay: float = 0.0, clip_norm: float = 1.0,
                   memory_lr_mult: float = 5.0, ema: float = 0.0) -> tuple[optax.GradientTransformation, Callable]:
    """(transformation, base schedule). Clipping is on the global norm of all gradients.
    ema > 0: the state also keeps the parameters' moving average with that decay (`ema_params`)."""
    schedule = lr_schedule(lr, warmup_steps, total_steps, min_lr_ratio, decay_steps)

    def adamw(sched):
        return optax.adamw(sched, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay, mask=decay_mask)

    parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm and clip_norm > 0 else []
    parts.append(optax.multi_transform(
        {"base": adamw(schedule), "memory": adamw(lambda step: schedule(step) * memory_lr_mult)},
        param_groups))
    if ema > 0:
        parts.append(param_ema(ema))
    return optax.chain(*parts), schedule


def optimizer_for(params: Any, optim: Any, total_steps: int) -> tuple[optax.GradientTransformation, Callable]:
    """make_optimizer with every setting of a config's optim section (the trainer and the AOT
    compile build the same chain, so a plan counts the state a run keeps, its EMA included)."""
    o = optim
    return make_optimizer(params, lr=o.lr, total_steps=total_steps, warmup_steps=o.warmup_steps,
                          min_lr_ratio=o.min_lr_ratio, decay_steps=o.decay_steps, b1=o.b1, b2=o.b2, eps=o.eps,
                          weight_decay=o.weight_decay, clip_norm=o.clip_norm, memory_lr_mult=o.memory_lr_mult,
                          ema=o.ema)
