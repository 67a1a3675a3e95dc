"""Validation while training (`eval.every`, `eval.path`, `eval.batches`): the mean loss of the
same held-out batches every time, so that a curve of it shows whether the run generalises.
The batches are read once, in order, from `eval.path` (data.source's format) or, for the
passkey source without a path, from the task's own generator under another seed; nothing
here touches the training data's order, so a resumed run logs the same numbers."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp

from comet_jax.data.jsonl import comet_token_names
from comet_jax.data.pipeline import make_loader, make_source, num_chunks_for
from comet_jax.parallel import sharding
from comet_jax.train.train_step import COMET_KEYS, FULL_KEYS, loss_sum

HELD_OUT_SEED = 1_000_003  # the passkey stream validation draws from (training uses run.seed + stage)


class Validator:
    def __init__(self, cfg, trainer, place: Callable[[dict], dict]):
        """`trainer` gives the model, comet config, tokenizer and mesh; `place` turns one
        host's batch into global arrays as the train step takes them."""
        self.cfg, self.trainer = cfg, trainer
        t, d = trainer, cfg.data
        local = cfg.train.batch_size // t.n_processes
        over = {"path": cfg.eval.path} if cfg.eval.path else {"seed": HELD_OUT_SEED}
        pipelined = t.mode == "comet" and t.stages > 1
        num_chunks = num_chunks_for(d.seq_len, t.comet, t.planners, t.stages) if pipelined else None
        src = make_source(d, t.tokenizer, seq_len=d.seq_len, passkey_min_len=min(d.passkey.min_len or d.seq_len,
                                                                               d.seq_len),
                          vocab_size=t.model.real_vocab,
                          reserved=comet_token_names(t.comet), **over)
        loader = make_loader(src, seq_len=d.seq_len, batch_size=local, comet_cfg=t.comet, planner_mix=t.planners,
                             mode=t.mode, seed=HELD_OUT_SEED, shuffle=False, shard_index=t.process,
                             shard_count=t.n_processes, num_chunks=num_chunks)
        keys = COMET_KEYS if t.mode == "comet" else FULL_KEYS
        try:
            self.batches = [place({k: v for k, v in next(loader).items() if k in keys})
                            for _ in range(cfg.eval.batches)]
        finally:
            loader.close()
        m = cfg.model
        self.fn = jax.jit(partial(loss_sum, model=t.model, comet=t.comet, mode=t.mode, schedule=m.schedule,
                                  remat=m.remat, pipeline_mesh=t.mesh if t.stages > 1 else None))

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every
        return step % every == 0 or step == self.cfg.train.steps

    def __call__(self, params) -> float:
        total = count = jnp.zeros(())
        with sharding.tracing(self.trainer.mesh, self.cfg.mesh.rules):
            for batch in self.batches:
                s, c = self.fn(params, batch)
                total, count = total + s, count + c
        return float(total) / max(float(count), 1.0)
