"""Checks of a loaded training config: the files it reads exist (`validate_paths`) and its
values are valid and consistent with each other and the devices (`validate`). Each failure
is one ConfigError that names the key and the fix. `load_valid` loads a config and validates it.
This module imports `train_config`, never the other way round."""

from __future__ import annotations

import dataclasses
import functools
import math
import typing
from pathlib import Path

from comet_jax.data.files import data_files

from comet_jax.config import (ATTENTIONS, MODES, PASSKEY_FILLERS, PASSKEY_NAMES, PASSKEY_REPEATS, PASSKEY_SHIFT_AT,
                              PASSKEY_WORDINGS, PLANNERS, REMATS, SCHEDULES, SOURCES, TRAIN_DTYPES, ConfigError,
                              check_comet_settings)
from comet_jax.train.config_parse import unknown_key
from comet_jax.train.train_config import (FIELD_TYPES, PasskeySection, StagePasskeySection, TrainConfig,
                                         load_config)


def load_valid(args) -> TrainConfig:
    """The config of arguments parsed by `train_config.config_parser`, loaded and validated
    (ConfigError)."""
    cfg = load_config(args.config, args.overrides)
    validate(cfg)
    return cfg


def validate_paths(cfg: TrainConfig) -> None:
    """The files the run reads exist: checked before anything is imported, compiled or written."""
    d, m = cfg.data, cfg.model
    paths = [("data.path", d.path if d.source != "passkey" else ""), ("eval.path", cfg.eval.path)]
    paths += [(f"data.mixture[{i}].path", m.path) for i, m in enumerate(d.mixture)]
    for key, path in paths:
        if path:
            try:
                data_files(path)
            except FileNotFoundError as e:
                raise ConfigError(f"{key}: {e}") from None
    if m.init != "scratch" and not (Path(m.init) / "comet_jax.json").is_file():
        what = "does not exist" if not Path(m.init).exists() else "is not a converted checkpoint (no comet_jax.json)"
        raise ConfigError(f"model.init: {m.init} {what}; convert an HF model first with "
                          "`comet-convert SRC DST`, or use model.init=scratch")
    tok = Path(d.tokenizer)
    if d.tokenizer not in ("byte", "passkey", "checkpoint") and not (tok.is_file() or (tok / "tokenizer.json").is_file()):
        raise ConfigError(f"data.tokenizer: {d.tokenizer} is not byte, passkey, checkpoint or an existing "
                          "tokenizer.json file")


def validate_data(cfg: TrainConfig) -> None:
    """The passkey task fits every sequence length the run asks for (data.seq_len, each
    curriculum stage's seq_len, data.passkey.min_len): its shortest prompt depends on the
    tokenizer, so this builds it (after `validate_paths`, before anything is written)."""
    d, p = cfg.data, cfg.data.passkey
    if d.source != "passkey":
        return
    from comet_jax.data.passkey import PasskeySource
    from comet_jax.io.tokenizer import load_tokenizer, tokenizer_by_name

    try:
        tok = load_tokenizer(cfg.model.init) if d.tokenizer == "checkpoint" else tokenizer_by_name(d.tokenizer)
        shortest = {w: PasskeySource(tok, max_len=1 << 30, digits=p.digits, end=p.end, wording=w).shortest
                    for w in {p.wording} | {s.passkey.wording or p.wording for s in d.curriculum}}
    except (ValueError, OSError, AttributeError):
        return  # the trainer reports a tokenizer it cannot use (`validate` an unknown wording)
    # each length with the wording its stage asks in (a longer question makes the shortest prompt longer)
    stages = [(f"data.curriculum[{i}]", s, s.passkey.wording or p.wording) for i, s in enumerate(d.curriculum)]
    lengths = [("data.seq_len", d.seq_len, p.wording)] + [(f"{k}.seq_len", s.seq_len, w) for k, s, w in stages]
    lengths += [("data.passkey.min_len", p.min_len, p.wording)] if p.min_len else []
    lengths += [(f"{k}.passkey.min_len", s.passkey.min_len, w) for k, s, w in stages if s.passkey.min_len]
    for key, value, wording in lengths:
        why = (f"the shortest passkey prompt with a {p.digits}-digit key and its answer is {shortest[wording]} "
               f"tokens (data.tokenizer={d.tokenizer}, wording {wording})")
        if value < shortest[wording]:
            raise ConfigError(f"{key} ({value}) is too short for data.source=passkey: {why}; "
                              f"set {key} >= {shortest[wording]}")


# ---------------------------------------------------------------------------------------
# values


def _passkey_only(cfg: TrainConfig) -> None:
    """The passkey settings off their defaults need data.source=passkey: another source ignores
    them, and the dump of its config leaves them out (so they would be lost in it)."""
    if cfg.data.source == "passkey":
        return
    off = [f"data.passkey.{k}" for k, v in vars(cfg.data.passkey).items() if v != getattr(PasskeySection(), k)]
    off += [f"data.curriculum[{i}].passkey.{k}" for i, s in enumerate(cfg.data.curriculum)
            for k, v in vars(s.passkey).items() if v != getattr(StagePasskeySection(), k)]
    if off:
        raise ConfigError(f"{off[0]} applies only to data.source=passkey; remove it or set data.source=passkey")


def _value(cfg: TrainConfig, dotted: str):
    """The value at section.key (or data.passkey.key)."""
    return functools.reduce(getattr, dotted.split("."), cfg)


def _fields(obj, prefix: str):
    """(dotted key, type, value) of every field of a section, those of a section inside it too."""
    for key, tp in typing.get_type_hints(type(obj)).items():
        value = getattr(obj, key)
        if dataclasses.is_dataclass(tp):
            yield from _fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", tp, value


def _positive(cfg: TrainConfig, keys: str, minimum: float = 1, what: str = "> 0") -> None:
    for dotted in keys.split():
        value = _value(cfg, dotted)
        if value < minimum:
            raise ConfigError(f"{dotted} must be {what}, got {value}")


def _one_of(cfg: TrainConfig, dotted: str, choices: tuple[str, ...]) -> None:
    value = _value(cfg, dotted)
    if value not in choices:
        raise ConfigError(f"{dotted} must be one of {', '.join(choices)}, got {value!r}")


def validate(cfg: TrainConfig, device_count: int | None = None, process_count: int = 1) -> None:
    """Raise one ConfigError (naming the key and the fix) for the first invalid value.

    `device_count`/`process_count` (from jax) enable the checks against the mesh."""
    m, c, d, o, t, mesh = cfg.model, cfg.comet, cfg.data, cfg.optim, cfg.train, cfg.mesh
    _positive(cfg, "comet.min_chunk data.seq_len data.passkey.digits data.passkey.needles data.passkey.questions "
                   "optim.grad_accum train.steps train.batch_size train.log_every "
                   "mesh.data mesh.fsdp mesh.tensor mesh.stage mesh.slices checkpoint.every checkpoint.keep")
    _positive(cfg, "model.vocab_size data.num_workers data.passkey.min_len data.passkey.shift "
                   "optim.warmup_steps optim.weight_decay optim.clip_norm optim.memory_lr_mult "
                   "optim.min_lr_ratio optim.decay_steps logging.peak_tflops_per_device distributed.num_processes",
              minimum=0, what=">= 0")
    for section in FIELD_TYPES:
        for dotted, tp, value in _fields(getattr(cfg, section), f"{section}."):
            if tp is float and not math.isfinite(value):
                raise ConfigError(f"{dotted} must be a finite number, got {value}")
    for dotted in ("model.rope_theta", "model.rms_eps", "optim.lr", "optim.eps"):
        value = _value(cfg, dotted)
        if not value > 0:
            raise ConfigError(f"{dotted} must be > 0, got {value}")
    for key in ("b1", "b2"):
        if not 0 <= getattr(o, key) < 1:
            raise ConfigError(f"optim.{key} must be in [0, 1), got {getattr(o, key)}")
    if not 0 <= o.ema < 1:
        raise ConfigError(f"optim.ema must be in [0, 1) (0: no average; 0.99: a half-life of ~69 steps), got {o.ema}")
    if o.min_lr_ratio > 1:
        raise ConfigError(f"optim.min_lr_ratio must be in [0, 1], got {o.min_lr_ratio}")
    if cfg.eval.every < 0 or cfg.eval.batches < 1:
        raise ConfigError(f"eval.every must be >= 0 (0 = no validation) and eval.batches >= 1; got "
                          f"{cfg.eval.every} and {cfg.eval.batches}")
    if cfg.eval.every and not cfg.eval.path and d.source != "passkey":
        raise ConfigError(f"eval.every={cfg.eval.every} needs eval.path: held-out data in the format of "
                          f"data.source={d.source}")
    if cfg.eval.passkey_samples < 1 or any(n < 1 for n in cfg.eval.passkey_lengths):
        raise ConfigError(f"eval.passkey_samples must be >= 1 and eval.passkey_lengths positive token counts; got "
                          f"{cfg.eval.passkey_samples} and {list(cfg.eval.passkey_lengths)}")
    steps = cfg.logging.profile_steps
    if steps and (len(steps) != 2 or not 1 <= steps[0] <= steps[1] <= t.steps):
        raise ConfigError(f"logging.profile_steps must be [start, stop] with 1 <= start <= stop <= train.steps "
                          f"({t.steps}), or [] for no profile; got {list(steps)}")
    _one_of(cfg, "distributed.init", ("auto", "always", "never"))
    if cfg.distributed.process_id < -1:
        raise ConfigError(f"distributed.process_id must be >= 0, or -1 for the environment; "
                          f"got {cfg.distributed.process_id}")

    # model
    _one_of(cfg, "model.schedule", SCHEDULES)
    _one_of(cfg, "model.remat", REMATS)
    if not m.init:
        raise ConfigError("model.init is empty; use scratch or the path of a converted checkpoint")
    if m.init == "scratch":  # a converted checkpoint brings its own shape
        m.validate_shape(TRAIN_DTYPES)
        if m.num_kv_heads % mesh.tensor:
            raise ConfigError(f"model.num_kv_heads ({m.num_kv_heads}) must be divisible by mesh.tensor "
                              f"({mesh.tensor}); lower mesh.tensor")
    else:
        _one_of(cfg, "model.dtype", TRAIN_DTYPES)
        _one_of(cfg, "model.attention", ATTENTIONS)

    # comet
    _one_of(cfg, "comet.mode", MODES)
    chunked = c.mode == "comet"  # mode full has no chunks
    if chunked and c.chunk_size > d.seq_len:
        raise ConfigError(f"comet.chunk_size ({c.chunk_size}) is larger than data.seq_len ({d.seq_len}); "
                          "lower comet.chunk_size or raise data.seq_len")
    check_comet_settings(c.chunk_size, c.global_size, c.stride, c.budget)
    for name, weight in c.planners.items():
        if name not in PLANNERS:
            raise unknown_key(f"comet.planners.{name}", list(PLANNERS), "planners")
        if weight < 0:
            raise ConfigError(f"comet.planners.{name} must be >= 0, got {weight}")
    if not sum(c.planners.values()) > 0:
        raise ConfigError(f"comet.planners needs a positive weight, e.g. {{fixed: 1.0}}; got {c.planners}")
    if c.planners.get("semantic", 0) > 0 and not c.boundary_ids:
        raise ConfigError("comet.planners uses semantic but comet.boundary_ids is empty; list the token ids "
                          "to split after (e.g. newline, period)")

    # data
    _one_of(cfg, "data.source", SOURCES)
    _passkey_only(cfg)
    p = d.passkey
    if p.loss not in ("answer", "all"):
        raise ConfigError(f"data.passkey.loss must be answer or all, got {p.loss!r}")
    _one_of(cfg, "data.passkey.filler", PASSKEY_FILLERS)
    _one_of(cfg, "data.passkey.repeats", PASSKEY_REPEATS)
    _one_of(cfg, "data.passkey.shift_at", PASSKEY_SHIFT_AT)
    _one_of(cfg, "data.passkey.wording", PASSKEY_WORDINGS)
    if not 0 <= p.shift_share <= 1:
        raise ConfigError(f"data.passkey.shift_share must be in [0, 1] (the share of sequences with a shift), "
                          f"got {p.shift_share}")
    if not 0 <= p.near <= 1:
        raise ConfigError(f"data.passkey.near must be in [0, 1] (the share of sequences with the needle right "
                          f"before the question), got {p.near}")
    if not 0 <= p.named <= len(PASSKEY_NAMES):
        raise ConfigError(f"data.passkey.named must be 0..{len(PASSKEY_NAMES)} (one key per name: "
                          f"{', '.join(PASSKEY_NAMES)}), got {p.named}")
    if any(ch.isdigit() for ch in p.end):
        raise ConfigError(f"data.passkey.end must not contain digits (it marks the end of the key), "
                          f"got {p.end!r}; e.g. data.passkey.end=.")
    if d.source != "passkey" and not d.path and not d.mixture:
        raise ConfigError(f"data.source={d.source} needs data.path (its files: comma-separated, globs allowed) or "
                          "data.mixture ([{path, weight}, ...])")
    if d.mixture and (d.path or d.source == "passkey"):
        raise ConfigError("data.mixture replaces data.path and mixes files of data.source=jsonl or arrayrecord; "
                          + ("remove data.path" if d.path else f"set data.source (now {d.source})"))
    for i, item in enumerate(d.mixture):
        if not (item.weight > 0 and math.isfinite(item.weight)):
            raise ConfigError(f"data.mixture[{i}].weight must be > 0, got {item.weight}")
    if d.tokenizer == "checkpoint" and m.init == "scratch":
        raise ConfigError("data.tokenizer=checkpoint needs model.init to be a converted checkpoint; "
                          "use data.tokenizer=byte, passkey or a tokenizer.json path for model.init=scratch")
    last = 0
    for i, item in enumerate(d.curriculum):
        key = f"data.curriculum[{i}]"
        for k, minimum in (("until_step", 1), ("seq_len", 1), ("chunk_size", 0), ("passkey.min_len", 0),
                           ("passkey.needles", 0), ("passkey.shift", -1)):
            value = functools.reduce(getattr, k.split("."), item)
            if value < minimum:
                what = ("a positive int" if minimum > 0 else "a positive int (or 0: the section's value)"
                        if minimum == 0 else "an int >= 0 (or -1: the section's value)")
                raise ConfigError(f"{key}.{k} must be {what}, got {value!r}")
        if item.passkey.wording and item.passkey.wording not in PASSKEY_WORDINGS:
            raise ConfigError(f"{key}.passkey.wording must be one of {', '.join(PASSKEY_WORDINGS)} "
                              f"(or leave it out: data.passkey.wording), got {item.passkey.wording!r}")
        if not (item.passkey.near == -1 or 0 <= item.passkey.near <= 1):
            raise ConfigError(f"{key}.passkey.near must be in [0, 1] (or leave it out: data.passkey.near), "
                              f"got {item.passkey.near}")
        if item.until_step <= last:
            raise ConfigError(f"{key}.until_step ({item.until_step}) must be larger than the previous "
                              f"stage's ({last}); list the stages in order")
        last = item.until_step
        stage_chunk = item.chunk_size or c.chunk_size
        if chunked and stage_chunk > item.seq_len:
            name = f"{key}.chunk_size" if item.chunk_size else "comet.chunk_size"
            raise ConfigError(f"{name} ({stage_chunk}) is larger than {key}.seq_len "
                              f"({item.seq_len}); raise that stage's seq_len")

    # batch and mesh
    from comet_jax.parallel.sharding import check_rules

    check_rules(mesh.rules)
    if mesh.data % mesh.slices:
        raise ConfigError(f"mesh.data ({mesh.data}) must be a multiple of mesh.slices ({mesh.slices}): the data axis "
                          f"spans the slices (e.g. mesh.data={mesh.slices})")
    dp = mesh.data * mesh.fsdp
    if t.batch_size % dp:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by data parallelism "
                          f"mesh.data*mesh.fsdp = {dp}")
    if t.batch_size % o.grad_accum or (t.batch_size // o.grad_accum) % dp:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by optim.grad_accum "
                          f"({o.grad_accum}) times mesh.data*mesh.fsdp ({dp}): each micro-batch is "
                          "split over the data-parallel devices")
    if t.batch_size % process_count:
        raise ConfigError(f"train.batch_size ({t.batch_size}) must be divisible by the number of "
                          f"processes ({process_count})")
    if device_count is not None:
        total = dp * mesh.tensor * mesh.stage
        if total != device_count:
            raise ConfigError(
                f"mesh data*fsdp*tensor*stage = {total} but {device_count} devices are available; "
                f"set the mesh axes so their product is {device_count} (e.g. mesh.fsdp={device_count} "
                "mesh.data=1 mesh.tensor=1 mesh.stage=1)")
