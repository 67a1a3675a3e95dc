"""Validation while training (`eval.every`, `eval.path`, `eval.batches`, `eval.passkey_lengths`):
the losses of the same held-out batches every time, so that a curve of them shows whether the
run generalises, and optionally passkey retrieval at a few lengths.

Logged: `eval_loss` (mean over every labelled token), `eval_loss_first_chunk` and
`eval_loss_last_chunk` (mean over the labelled tokens of each sequence's first chunk, and of
the chunk holding its last prediction; chunks of comet.chunk_size tokens in full mode too):
the last chunk sees the rest of the document only through the memory, so a last-chunk loss
falling below the first-chunk loss is the memory at work. `eval_passkey_{length}`: the share
of passkey prompts of that many tokens (depths 0, 0.5, 1; `eval.passkey_samples` each) whose
greedy answer starts with the key (comet-passkey's "accuracy").

The batches are read once, in order, from `eval.path` (data.source's format; JSONL or
ArrayRecord by the file names when training on the passkey task) or, for the passkey source
without a path, from the task's own generator under another seed; nothing here
touches the training data's order, so a resumed run logs the same numbers."""

from __future__ import annotations

from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from comet_jax.config import ConfigError
from comet_jax.data.files import held_out_source
from comet_jax.data.jsonl import comet_token_names
from comet_jax.data.pipeline import make_loader, make_source, num_chunks_for
from comet_jax.layout import Slots
from comet_jax.loss import IGNORE
from comet_jax.parallel import sharding
from comet_jax.train.train_step import COMET_KEYS, FULL_KEYS, token_losses

HELD_OUT_SEED = 1_000_003  # the passkey stream validation draws from (training uses run.seed + stage)
PASSKEY_DEPTHS = (0.0, 0.5, 1.0)


def chunk_masks(batch: dict, mode: str, comet) -> tuple[jnp.ndarray, jnp.ndarray]:
    """(first, last): masks shaped like the labels of each sequence's first chunk and of the
    chunk holding its last prediction (the one made at token length - 2)."""
    labelled = batch["labels"] != IGNORE
    if mode == "comet":  # labels [N, B, C]; the chunks as laid out (any planner)
        text = jnp.sum(batch["valid"][:, :, Slots.of(comet).text_slots], axis=-1)  # [N, B] tokens per chunk
        ends = jnp.cumsum(text, axis=0)
        last = jnp.sum(ends <= ends[-1] - 2, axis=0)  # [B]: chunks wholly before token length - 2
        idx = jnp.arange(text.shape[0])[:, None]
        return labelled & (idx == 0)[..., None], labelled & (idx == last[None])[..., None]
    # labels [B, T]: the label at t is the prediction made at t; chunks of comet.chunk_size
    chunk = jnp.arange(labelled.shape[1])[None] // comet.chunk_size
    last = (jnp.maximum(batch["lengths"], 2) - 2)[:, None] // comet.chunk_size
    return labelled & (chunk == 0), labelled & (chunk == last)


def loss_sums(params, batch, *, mode: str, comet, **kw) -> jnp.ndarray:
    """[total, count, first, first count, last, last count] of one batch."""
    nll = token_losses(params, batch, mode=mode, comet=comet, **kw)
    labelled = batch["labels"] != IGNORE
    first, last = chunk_masks(batch, mode, comet)
    return jnp.stack([jnp.sum(nll), jnp.sum(labelled), jnp.sum(jnp.where(first, nll, 0)), jnp.sum(first),
                      jnp.sum(jnp.where(last, nll, 0)), jnp.sum(last)]).astype(jnp.float32)


class Validator:
    def __init__(self, cfg, trainer, place: Callable[[dict], dict]):
        """`trainer` gives the model, comet config, tokenizer and mesh; `place` turns one
        host's batch into global arrays as the train step takes them."""
        self.cfg, self.trainer = cfg, trainer
        t, d = trainer, cfg.data
        local = cfg.train.batch_size // t.n_processes
        over = ({"path": cfg.eval.path, "source": held_out_source(d.source, cfg.eval.path)} if cfg.eval.path
                else {"seed": HELD_OUT_SEED})
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
        self.fn = jax.jit(partial(loss_sums, model=t.model, comet=t.comet, mode=t.mode,
                                  schedule=m.schedule, remat=m.remat, pipeline_mesh=t.mesh if t.stages > 1 else None))
        self.passkey = PasskeyProbe(cfg, trainer) if cfg.eval.passkey_lengths else None

    def due(self, step: int) -> bool:
        every = self.cfg.eval.every
        return step % every == 0 or step == self.cfg.train.steps

    def __call__(self, params) -> dict[str, float]:
        sums = jnp.zeros(6, jnp.float32)
        with sharding.tracing(self.trainer.mesh, self.cfg.mesh.rules):
            for batch in self.batches:
                sums = sums + self.fn(params, batch)
        total, count, first, n_first, last, n_last = (float(x) for x in np.asarray(sums))
        out = {"eval_loss": total / max(count, 1.0)}
        if n_first:  # a passkey task scored on its answers only may have nothing in a first chunk
            out["eval_loss_first_chunk"] = first / n_first
        if n_last:
            out["eval_loss_last_chunk"] = last / n_last
        if self.passkey is not None:
            out.update(self.passkey(params))
        return out


def describe(results: dict[str, float], batches: int) -> str:
    """The log line's text after 'step N: '."""
    parts = [f"eval_loss {results['eval_loss']:.4f}"]
    if "eval_loss_first_chunk" in results and "eval_loss_last_chunk" in results:
        parts.append(f"first chunk {results['eval_loss_first_chunk']:.4f} -> last chunk "
                     f"{results['eval_loss_last_chunk']:.4f}")
    parts += [f"passkey@{k.rsplit('_', 1)[1]} {v:.2f}" for k, v in results.items() if k.startswith("eval_passkey_")]
    return ", ".join(parts) + f" ({batches} held-out batch{'es' if batches != 1 else ''})"


class PasskeyProbe:
    """Passkey retrieval of the current parameters at `eval.passkey_lengths` (the jitted
    generation of comet-passkey; the same prompts every time: fixed seed)."""

    def __init__(self, cfg, trainer):
        from comet_jax.data.passkey import build_prompt
        from comet_jax.evals.passkey import prefix_ids

        if trainer.n_processes > 1:
            raise ConfigError("eval.passkey_lengths runs on one process only; set eval.passkey_lengths=[] for a "
                              "multi-process run (eval_loss still works)")
        self.cfg, self.trainer = cfg, trainer
        for n in cfg.eval.passkey_lengths:  # refuse a length too short before training, not at the first eval
            try:
                build_prompt(trainer.tokenizer, n, 0.5, "0" * 5, prefix_ids=prefix_ids(trainer.tokenizer))
            except ValueError as e:
                raise ConfigError(f"eval.passkey_lengths: {e}") from None

    def __call__(self, params) -> dict[str, float]:
        from comet_jax.evals.passkey import evaluate
        from comet_jax.infer.generate import Generator

        t, e = self.trainer, self.cfg.eval
        gen = Generator(params, t.model, t.comet, mode=t.mode)
        cells = evaluate(gen, t.tokenizer, list(e.passkey_lengths), PASSKEY_DEPTHS, e.passkey_samples,
                         seed=HELD_OUT_SEED, batch_size=e.passkey_samples)
        return {f"eval_passkey_{n}": float(np.mean([c["accuracy"] for c in cells if c["length"] == n]))
                for n in e.passkey_lengths}
