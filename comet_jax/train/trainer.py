"""The training loop behind `comet-train`: model, data, optimizer, mesh, checkpoints,
metrics. Everything that is not a loop lives in its own module; this file wires them."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from comet_jax import checkpoint
from comet_jax.chunking import PlannerMix
from comet_jax.config import ConfigError
from comet_jax.data.jsonl import comet_token_names
from comet_jax.data.pipeline import make_loader, make_source, num_chunks_for
from comet_jax.evals.common import atomic_write
from comet_jax.train.flops import train_flops_per_token
from comet_jax.layout import Slots
from comet_jax.resources import device_peak_mb
from comet_jax.train.metrics import MetricsWriter, format_line
from comet_jax.model.init import init_params
from comet_jax.train.optim import ema_params, optimizer_for
from comet_jax.parallel import sharding
from comet_jax.train.run_setup import build_model, carried_from_init, load_tokenizer, save_tokenizer
from comet_jax.train.run_tools import CompileCache, Profiler
from comet_jax.train.validation import Validator, describe
from comet_jax.train.run_lock import RunDirLocked, RunLock
from comet_jax.train.train_checkpoint import (ASIDE_DIR, CheckpointSaveError, NoReadableCheckpoint, NonFiniteState,
                                              TrainCheckpointer, abstract_like, root_cause)
from comet_jax.train.curriculum import Stage, curriculum_stage
from comet_jax.train.train_config import dump_yaml, run_dir, to_dict
from comet_jax.train.train_step import batch_axis, make_train_step

EXIT_NAN = 3
EXIT_SAVE = 4  # a checkpoint could not be written (disk full, permissions)
# A non-finite loss this soon after a resume may come from the checkpoint resumed from.
RESUME_SUSPECT_STEPS = 10
STATE_SETTINGS = ("model.", "comet.", "optim.clip_norm", "optim.weight_decay", "optim.memory_lr_mult",
                  "optim.grad_accum")
MODEL_DIR = "model"  # RUN_DIR/model: the inference checkpoint a finished run exports
# settings whose change on resume is not worth a word (where the run is, how it is joined)
QUIET_SETTINGS = ("run.dir", "distributed.")


class TrainingStopped(RuntimeError):
    """The run stopped early (NaN/Inf loss or state); the last good checkpoint is kept."""


def new_metrics_file(run_dir: Path) -> Path | None:
    """Move RUN_DIR/metrics.jsonl of an earlier run to metrics.N.jsonl (the first free N), so a
    run that starts over does not mix its steps with the old ones. Returns the new name."""
    old = run_dir / "metrics.jsonl"
    if not old.is_file() or old.stat().st_size == 0:
        return None
    n = 1
    while (run_dir / f"metrics.{n}.jsonl").exists():
        n += 1
    return old.rename(run_dir / f"metrics.{n}.jsonl")


def changed_settings(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """'optim.lr 0.001 -> 0.0003' for each setting that differs from the run that wrote a
    checkpoint (those it recorded; `QUIET_SETTINGS` left out)."""
    def text(v: Any) -> str:
        return json.dumps(v) if isinstance(v, (list, dict, str)) else str(v)

    return [f"{k} {text(saved[k])} -> {text(v)}" for k, v in now.items()
            if k in saved and saved[k] != v and not k.startswith(QUIET_SETTINGS)]


class Trainer:
    def __init__(self, cfg, log=print):
        self.cfg, self.log = cfg, log
        self.run_dir = Path(run_dir(cfg))
        self.process, self.n_processes = jax.process_index(), jax.process_count()
        self.tokenizer = load_tokenizer(cfg)
        self.model, self.comet = build_model(cfg, self.tokenizer)
        self.mode = cfg.comet.mode
        self.stages = cfg.mesh.stage
        if self.stages > 1 and self.mode != "comet":
            raise ConfigError("mesh.stage > 1 pipelines CoMeT chunks; it needs comet.mode=comet")
        self.mesh = sharding.make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor, self.stages,
                                       slices=cfg.mesh.slices)
        self.planners = PlannerMix(weights=dict(cfg.comet.planners), min_size=cfg.comet.min_chunk,
                                   boundary_ids=tuple(cfg.comet.boundary_ids))
        self.flops_per_token = train_flops_per_token(self.model, self.comet if self.mode == "comet" else None,
                                                     context=cfg.data.seq_len)

    # -- state ---------------------------------------------------------------------------
    def init_state(self):
        cfg = self.cfg
        p_abstract = jax.eval_shape(lambda: init_params(self.model, self.comet, jax.random.key(0)))
        p_shard = sharding.shardings(sharding.param_specs(p_abstract, self.mesh, cfg.mesh.rules), self.mesh)
        if cfg.model.init == "scratch":
            params = jax.jit(lambda: init_params(self.model, self.comet, jax.random.key(cfg.run.seed)),
                             out_shardings=p_shard)()
        else:
            params = checkpoint.load_params(cfg.model.init, p_shard)
            params = jax.tree.map(lambda x: x.astype(jnp.dtype(self.model.param_dtype)), params)
        self.tx, self.schedule = optimizer_for(params, cfg.optim, cfg.train.steps)
        # moments inherit their parameter's sharding; the scalar counts are made on one
        # device and are replicated over the mesh instead
        replicated = NamedSharding(self.mesh, sharding.P())
        opt_state = jax.tree.map(lambda x: x if isinstance(x.sharding, NamedSharding) else jax.device_put(x, replicated),
                                 jax.jit(self.tx.init)(params))
        step = jax.device_put(jnp.zeros((), jnp.int32), replicated)
        return {"params": params, "opt_state": opt_state, "step": step}

    # -- data ----------------------------------------------------------------------------
    def stage_comet(self, stage: Stage):
        """The comet config of a curriculum stage (its chunk size may differ from the final one)."""
        return dataclasses.replace(self.comet, chunk_size=stage.chunk_size)

    def loader(self, stage: Stage):
        cfg = self.cfg
        seq_len, comet = stage.seq_len, self.stage_comet(stage)
        local_batch = cfg.train.batch_size // self.n_processes
        src = make_source(cfg.data, self.tokenizer, seq_len=seq_len,
                          passkey_min_len=stage.passkey_min_len, passkey_needles=stage.needles,
                          passkey_shift=stage.shift, passkey_wording=stage.wording, passkey_near=stage.near,
                          seed=cfg.run.seed + stage.index,
                          vocab_size=self.model.real_vocab, reserved=comet_token_names(self.comet))
        pipelined = self.mode == "comet" and self.stages > 1
        num_chunks = num_chunks_for(seq_len, comet, self.planners, self.stages) if pipelined else None
        return make_loader(src, seq_len=seq_len, batch_size=local_batch, comet_cfg=comet,
                           planner_mix=self.planners, mode=self.mode, seed=cfg.run.seed + 1000 * stage.index,
                           shuffle=cfg.data.shuffle, shard_index=self.process, shard_count=self.n_processes,
                           num_workers=cfg.data.num_workers, num_chunks=num_chunks)

    def global_batch(self, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
        axis = batch_axis(self.mode)
        out = {}
        for k, v in local.items():
            if k == "n_tokens":
                continue
            chunk_axis = 0 if self.mode == "comet" and self.stages > 1 else None
            spec = sharding.batch_spec(axis, v.ndim, chunk_axis) if v.ndim > axis else sharding.P()
            out[k] = jax.make_array_from_process_local_data(NamedSharding(self.mesh, spec), v)
        return out

    def text_tokens(self, local: dict[str, np.ndarray], comet) -> int:
        if self.mode == "comet":
            return int(local["valid"][:, :, Slots.of(comet).text_slots].sum()) * self.n_processes
        return int(local["lengths"].sum()) * self.n_processes

    def identity(self) -> dict[str, Any]:
        """What a checkpoint of this run must have been written with: the settings that define
        the parameters or the meaning of the token ids. The rest (learning rate, steps, mesh,
        chunk size, compute dtype, attention kernel) may change when resuming."""
        model = {k: v for k, v in checkpoint.flatten({"model": dataclasses.asdict(self.model)}).items()
                 if k not in ("model.dtype", "model.initializer_range", "model.attention")}
        return {**model, "comet.mode": self.mode, "comet.global_size": self.comet.global_size,
                "comet.temp_memory": self.comet.has_temp, "data.tokenizer": self.cfg.data.tokenizer}

    def non_finite(self, step: int, what: str, start: int, resumed: bool, ckpt: TrainCheckpointer) -> TrainingStopped:
        """The one-line error of a non-finite loss, gradient or state. A saved state is known to
        be finite, not good: the steps before a NaN may already have been diverging (a huge
        learning rate gives finite but useless weights first), so no checkpoint is called good."""
        steps, keep = ckpt.steps(), self.cfg.checkpoint.keep
        if not steps:
            msg = (f"{what} at step {step}; stopping; no checkpoint was saved in {ckpt.directory}: lower optim.lr "
                   "and rerun (it starts from step 0)")
        else:
            earlier = (f", or from an earlier step after moving the later step directories into "
                       f"{self.run_dir / ASIDE_DIR}" if len(steps) > 1 else " (no earlier step is kept)")
            msg = (f"{what} at step {step}; stopping; the checkpoints kept, step(s) {', '.join(map(str, steps))} in "
                   f"{ckpt.directory}, hold finite states, which is all that is checked: the newest may already be "
                   f"diverging (see the loss in {self.run_dir / 'metrics.jsonl'}). Lower optim.lr and rerun to "
                   f"resume from step {steps[-1]}{earlier}; checkpoint.keep={keep} keeps only the newest {keep}")
        if resumed and step - start <= RESUME_SUSPECT_STEPS:
            earlier = [s for s in ckpt.steps() if s < start]
            instead = (f"move {ckpt.directory / str(start)} aside (e.g. into {self.run_dir / ASIDE_DIR}) "
                       f"and rerun to resume from step {earlier[-1]}" if earlier else "no earlier checkpoint is left")
            msg += (f". This is {step - start} step(s) after resuming from step {start}: if that checkpoint is at "
                    f"fault, {instead}")
        return TrainingStopped(msg)

    def stage_key(self, stage: Stage, key: str) -> str:
        """The setting a stage's value comes from: data.curriculum[i].KEY or data.KEY."""
        return f"data.curriculum[{stage.index}].{key}" if stage.index < len(self.cfg.data.curriculum) else f"data.{key}"

    def check_data_resumes(self, start: int, stage: Stage, meta: dict[str, Any]) -> None:
        """ConfigError when the checkpoint's data iterator was written for sequences of another
        length: it cannot go on at this one (nothing is changed)."""
        saved = meta.get("seq_len")
        if saved is not None and saved != stage.seq_len:
            key = self.stage_key(stage, "seq_len")
            raise ConfigError(f"{key} is {stage.seq_len} but the checkpoint at step {start} in "
                              f"{self.run_dir / 'checkpoints'} was written with {key}={saved}: its data iterator "
                              f"cannot go on at another length; resume with {key}={saved}, or start a new run "
                              "with another run.dir. Nothing was changed")

    def data_mismatch(self, start: int, meta: dict[str, Any], cause: str) -> ConfigError:
        """The checkpoint's data iterator state does not fit this run's data pipeline."""
        now = checkpoint.flatten(to_dict(self.cfg))
        diffs = [d for d in changed_settings(meta.get("settings", {}), now) if d.startswith("data.")]
        what = f"data settings changed ({', '.join(diffs)})" if diffs else cause
        return ConfigError(f"the data iterator of the checkpoint at step {start} in {self.run_dir / 'checkpoints'} "
                           f"does not fit this run's data: {what}; resume with the data settings it was written "
                           "with, or start a new run with another run.dir. Nothing was changed")

    # -- loop ----------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.run_dir.mkdir(parents=True, exist_ok=True)
        cache = CompileCache(cfg.run.compile_cache) if cfg.run.compile_cache else None
        validator = Validator(cfg, self, self.global_batch) if cfg.eval.every else None
        profiler = Profiler(str(self.run_dir / "profile"), cfg.logging.profile_steps, self.log)
        state = self.init_state()
        ckpt = TrainCheckpointer(self.run_dir / "checkpoints", keep=cfg.checkpoint.keep,
                                 async_save=cfg.checkpoint.async_save)
        start, stage, loader = 0, None, None
        identity = self.identity()
        everything = checkpoint.flatten(to_dict(cfg))  # every setting, logged when one changes on resume
        # the settings that may change the state's structure, named when it differs on resume
        settings = {k: v for k, v in everything.items()
                    if k.startswith(STATE_SETTINGS) and not isinstance(v, (list, dict))}
        try:
            restored = ckpt.restore_latest(abstract_like(state), identity=identity, config=settings,
                                           restart_if_unreadable=cfg.checkpoint.restart_if_unreadable, log=self.log)
        except BaseException:
            ckpt.close(raise_errors=False)
            raise
        if restored is None and self.process == 0:
            moved = new_metrics_file(self.run_dir)
            if moved is not None:
                self.log(f"no checkpoint to resume from in {ckpt.directory}: starting at step 0; the earlier "
                         f"run's metrics were moved to {moved}")
        if restored is not None:
            start, state, data_state, meta = restored
            try:
                stage = curriculum_stage(cfg, start)
                if meta.get("stage") == stage.index:
                    self.check_data_resumes(start, stage, meta)
                    loader = self.loader(stage)
                    try:
                        loader.set_state(data_state)
                    except Exception as e:  # noqa: BLE001 - grain: a state of another data pipeline
                        raise self.data_mismatch(start, meta, root_cause(e)) from None
            except BaseException:
                if loader is not None:
                    loader.close()
                ckpt.close(raise_errors=False)
                raise
            self.log(f"resumed from {self.run_dir / 'checkpoints'} at step {start}")
            changed = changed_settings(meta.get("settings", meta.get("config", {})), everything)
            if changed and self.process == 0:
                self.log(f"resuming with changed settings: {', '.join(changed)}")
        if self.process == 0:  # only now: a refused resume changes nothing, this file included
            atomic_write(self.run_dir / "config.yaml", dump_yaml(cfg).encode())
        shardings = jax.tree.map(lambda x: x.sharding, state)
        step_fns = {}  # one jitted step per chunk size (the layout's slot count is static)

        def step_fn_for(comet):
            if comet.chunk_size not in step_fns:
                step_fns[comet.chunk_size] = make_train_step(
                    self.tx, self.schedule, model=self.model, comet=comet, mode=self.mode,
                    schedule=cfg.model.schedule, remat=cfg.model.remat, grad_accum=cfg.optim.grad_accum,
                    state_shardings=shardings, pipeline_mesh=self.mesh if self.stages > 1 else None)
            return step_fns[comet.chunk_size]

        comet = step_fn = None
        writer = MetricsWriter(self.run_dir, jsonl=cfg.logging.jsonl, tensorboard=cfg.logging.tensorboard,
                               enabled=self.process == 0, resume_step=start if restored is not None else None)
        stop = {"signal": None}

        def on_signal(signum, frame):
            stop["signal"] = signum

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        peak = cfg.logging.peak_tflops_per_device * 1e12 * jax.device_count()
        last: dict[str, Any] = {}
        reported_skips = (0, 0)
        finished = False
        try:
            for step in range(start, cfg.train.steps):
                want = curriculum_stage(cfg, step)
                if loader is None or want.index != stage.index:
                    if loader is not None:
                        loader.close()
                    stage, loader = want, self.loader(want)
                    chunks = f", chunks of {stage.chunk_size}" if self.mode == "comet" else ""
                    self.log(f"data stage {stage.index}: sequences of {stage.seq_len} tokens{chunks}")
                if step_fn is None or comet.chunk_size != stage.chunk_size:
                    comet = self.stage_comet(stage)
                    step_fn = step_fn_for(comet)
                seq_len = stage.seq_len
                local = next(loader)
                t0 = time.perf_counter()
                profiler.before(step + 1)
                with sharding.tracing(self.mesh, cfg.mesh.rules):
                    state, metrics = step_fn(state, self.global_batch(local))
                profiler.after(step + 1, state)
                metrics = jax.device_get(metrics)
                dt = time.perf_counter() - t0
                loss, gnorm = float(metrics["loss"]), float(metrics["grad_norm"])
                if not math.isfinite(loss) or not math.isfinite(gnorm):
                    what = f"loss is {loss}" if not math.isfinite(loss) else f"gradient norm is {gnorm}"
                    raise self.non_finite(step + 1, what, start, restored is not None, ckpt)
                tps = self.text_tokens(local, comet) / dt
                last = {"loss": loss, "lr": float(metrics["lr"]), "grad_norm": float(metrics["grad_norm"]),
                        "tokens_per_s": tps, "step_time": dt, "seq_len": seq_len,
                        "mfu": self.flops_per_token * tps / peak if peak > 0 else None,
                        "memory_mb": device_peak_mb(),
                        "data_bad": loader.stats["bad"], "data_short": loader.stats["short"]}
                if validator is not None and validator.due(step + 1):
                    results = validator(state["params"])
                    last.update(results)
                    self.log(f"step {step + 1}: {describe(results, cfg.eval.batches)}")
                writer.write(step + 1, last)
                if (step + 1) % cfg.train.log_every == 0 or step == start or step + 1 == cfg.train.steps:
                    if self.process == 0:
                        self.log(format_line(step + 1, cfg.train.steps, last))
                        if cache is not None and step == start:
                            self.log(cache.summary())
                        skips = (loader.stats["bad"], loader.stats["short"])
                        if skips != reported_skips:
                            reported_skips = skips
                            self.log(f"data stage {stage.index}: {skips[0]} bad record(s) skipped, {skips[1]} "
                                     "document(s) of < 2 tokens dropped so far")
                meta = {"stage": stage.index, "seq_len": seq_len, "identity": identity, "config": settings,
                        "settings": everything}
                done = step + 1 == cfg.train.steps
                if done or (step + 1) % cfg.checkpoint.every == 0 or stop["signal"] is not None:
                    try:
                        ckpt.save(step + 1, state, loader.get_state(), meta, force=True)
                    except NonFiniteState as e:
                        raise self.non_finite(step + 1, str(e).split(";")[0], start, restored is not None,
                                              ckpt) from None
                if stop["signal"] is not None:
                    ckpt.wait()
                    self.log(f"received signal {stop['signal']}: saved step {step + 1}, exiting")
                    raise SystemExit(128 + stop["signal"])
            ckpt.wait()  # a failed final save is reported before the export
            finished = True
        finally:
            profiler.close()
            for s, h in old.items():
                signal.signal(s, h)
            ckpt.close(raise_errors=finished)
            writer.close()
            if loader is not None:
                loader.close()
        # optim.ema: the run's model is the parameters' moving average, not the last step's
        self.export(ema_params(state["opt_state"]) if cfg.optim.ema else state["params"])
        return {"final_step": cfg.train.steps, **last}

    # -- export --------------------------------------------------------------------------
    def export(self, params) -> Path | None:
        """Write the finished run's inference checkpoint to RUN_DIR/model (what
        `comet-loss` / `comet-passkey` load): the parameters in param_dtype, the configs, the
        tokenizer, and a "train" record in the meta. Replaces an earlier export atomically."""
        cfg = self.cfg
        dst = self.run_dir / MODEL_DIR
        if self.n_processes > 1:
            # Orbax's writer synchronises all processes, and the parameters are spread over
            # them; an export from process 0 alone would block.
            if self.process == 0:
                self.log(f"multi-process run: no inference checkpoint exported to {dst}; the final state is in "
                         f"{self.run_dir / 'checkpoints'} (step {cfg.train.steps})")
            return None
        dtype = jnp.dtype(self.model.param_dtype)
        host = jax.tree.map(lambda x: np.asarray(jax.device_get(x)).astype(dtype), params)
        extra = {"source": {"train_run": str(self.run_dir.absolute()), "step": cfg.train.steps},
                 "train": {"seq_len": cfg.data.seq_len, "mode": cfg.comet.mode, "steps": cfg.train.steps,
                           "tokenizer": cfg.data.tokenizer,
                           **({"ema": cfg.optim.ema} if cfg.optim.ema else {})}}
        try:
            with checkpoint.atomic_dir(dst, overwrite=True) as tmp:
                # checkpoint.save's steps, inside one atomic directory together with the tokenizer
                writer = checkpoint.StreamingWriter(tmp)
                for path, value in checkpoint.flatten(host).items():
                    writer.write(path, value)
                writer.finalize()
                extra["tokenizer"] = save_tokenizer(self.tokenizer, tmp, self.comet, self.log)
                carried, files = carried_from_init(cfg)
                extra.update(carried)
                for f in files:
                    if not (tmp / f.name).exists():  # the tokenizer just saved stays
                        shutil.copy2(f, tmp / f.name)
                checkpoint.write_meta(tmp, self.model, self.comet, extra)
        except Exception as e:  # noqa: BLE001 - disk full, permissions: one line, the state is safe
            raise CheckpointSaveError(f"exporting the inference checkpoint to {dst} failed: {root_cause(e)}; the "
                                      f"final state is in {self.run_dir / 'checkpoints'} (step {cfg.train.steps}): "
                                      "rerun the same command to retry the export") from None
        self.log(f"exported inference checkpoint to {dst}")
        return dst


def main_loop(cfg, log=None) -> int:
    log = log or (lambda m: print(m, file=sys.stderr, flush=True))
    from comet_jax.data.jsonl import DataError

    lock = None
    try:
        if jax.process_index() == 0:  # hosts of one run share its directory; one lock for all
            lock = RunLock(run_dir(cfg)).acquire()
        summary = Trainer(cfg, log).run()
    except RunDirLocked as e:
        log(f"error: {e}")
        return 2
    except TrainingStopped as e:
        log(f"error: {e}")
        return EXIT_NAN
    except (NoReadableCheckpoint, ConfigError) as e:
        log(f"error: {e}")
        return 2
    except CheckpointSaveError as e:
        log(f"error: {e}")
        return EXIT_SAVE
    except DataError as e:
        # a bad record (file:line) can be skipped; a missing or empty file cannot
        hint = " (set data.skip_bad=true to skip and count bad records)" if re.search(r":\d+: ", str(e)) else ""
        log(f"error: {e}{hint}")
        return 2
    finally:
        if lock is not None:
            lock.release()
    log(f"done: {summary}")
    return 0
