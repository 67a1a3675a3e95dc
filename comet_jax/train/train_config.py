"""Training config for `comet-train`: one YAML file plus `section.key=value` overrides.

The frozen dataclasses below are the single source of defaults; a YAML file only overrides
them, section by section (`run`, `model`, `comet`, `data`, `optim`, `train`, `mesh`,
`checkpoint`, `logging`, `eval`, `distributed`); one section has a section inside it,
`data.passkey` (YAML `data: {passkey: {digits: 3}}`, override `data.passkey.digits=3`).
`load_config` checks names and types (unknown keys get a "did you mean" suggestion),
`train_config_checks.validate` checks values and their consistency with the devices, and
`dump_yaml` writes a config that `load_config` reads back unchanged.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import sys
import typing
from dataclasses import dataclass, field
from typing import Any

import yaml

from comet_jax.config import REMATS, BackboneShape, ConfigError
from comet_jax.train.config_parse import DuplicateKey, StrictLoader, coerce, unknown_key


@dataclass(frozen=True)
class RunSection:
    name: str = "tiny"
    dir: str = ""  # empty -> runs/{name}
    seed: int = 0
    # a directory for JAX's persistent compilation cache: a restart loads the compiled step
    # instead of compiling it again (suggested on TPU; empty = off)
    compile_cache: str = ""


@dataclass(frozen=True)
class ModelSection(BackboneShape):
    """The backbone's shape (used from scratch only: a converted checkpoint brings its own;
    `dtype`, the compute dtype, applies to both) plus how the model is made and run."""

    init: str = "scratch"  # or a converted checkpoint dir (comet-convert)
    vocab_size: int = 0  # 0 = from the tokenizer (scratch only)
    rope_theta: float = 10000.0
    remat: str = "full"  # activation recompute: full, dots, offload (host memory) or none (true/false: full/none)
    schedule: str = "layer_major"  # or "chunk_major"


@dataclass(frozen=True)
class CometSection:
    mode: str = "comet"  # or "full": plain backbone training (the baseline)
    chunk_size: int = 64
    global_size: int = 8
    stride: int = 8
    budget: int = 16
    planners: dict[str, float] = field(default_factory=lambda: {"fixed": 1.0})
    min_chunk: int = 4
    boundary_ids: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class StagePasskeySection:
    """A curriculum stage's own passkey knobs, nested as data.passkey is (a stage item
    `{until_step: 300, seq_len: 128, passkey: {shift: 0}}`) and, like it, for
    data.source=passkey only (another source refuses values off these defaults, and
    --print-config leaves them out). The flat stage keys of older configs (`passkey_shift: 0`)
    are still read as these, with a notice."""

    min_len: int = 0  # 0 = data.passkey.min_len
    needles: int = 0  # 0 = data.passkey.needles
    shift: int = -1  # -1 = data.passkey.shift (0 is a value here: no shift)
    wording: str = ""  # "" = data.passkey.wording
    near: float = -1.0  # -1 = data.passkey.near


@dataclass(frozen=True)
class StageSection:
    """One curriculum stage: until optimizer step `until_step`, sequences of `seq_len` tokens."""

    until_step: int
    seq_len: int
    chunk_size: int = 0  # 0 = comet.chunk_size (comet.mode=full ignores it)
    passkey: StagePasskeySection = field(default_factory=StagePasskeySection)  # e.g. {shift: 0}


@dataclass(frozen=True)
class PasskeySection:
    """The synthetic passkey task (data.passkey; used by data.source=passkey only, so for
    another source a value off its default is refused and --print-config leaves the section
    out). Older configs spelled these flat, data.passkey_digits: still read, with a notice."""

    min_len: int = 0  # 0 = data.seq_len
    digits: int = 5
    loss: str = "answer"  # "answer": loss on the answer only; "all": on every token
    # up to this many (needle, question, answer) episodes per sequence: more supervised answers
    needles: int = 1
    # each needle asked about up to this many times, after more filler each time: more labels
    questions: int = 1
    # "end": a needle's later questions straight after its first answer, so the first one (the
    # one that needs the memory) comes after all the filler; "spread": filler before each
    repeats: str = "spread"
    end: str = ""  # text after each answer's key (e.g. "."): the model learns where it stops
    # "random": filler sentences drawn at random instead of their fixed cycle (varied contexts)
    filler: str = "cycle"
    # up to this many extra keys with a name ("the blue key"), each asked once at the end
    named: int = 0
    # up to this many filler tokens after the task line (uniform per sequence, which is that
    # much shorter otherwise): the chunk grid falls at a different place in every sequence
    shift: int = 0
    shift_at: str = "task"  # or "start": the shift before the task line
    shift_share: float = 1.0  # the share of sequences that get a shift; the rest none
    # "varied": each question in one of a few wordings (none the held-out prompt's), not always one;
    # "composed": lead sentences and a stem before "The pass key is", drawn per question;
    # "scrambled": those and as many with random word sequences as leads
    wording: str = "fixed"
    # the share of sequences whose (first) needle sits right before its question (depth 1)
    near: float = 0.0


@dataclass(frozen=True)
class MixtureItem:
    """One component of `data.mixture`: files (as data.path: comma-separated, globs) and its weight."""

    path: str
    weight: float = 1.0


@dataclass(frozen=True)
class DataSection:
    source: str = "passkey"  # or "jsonl", "arrayrecord"
    path: str = ""  # files in that format: comma-separated, globs allowed
    # instead of path: [{path, weight}, ...] drawn in proportion to the weights (data/mixture.py)
    mixture: list[MixtureItem] = field(default_factory=list)
    # "byte" (UTF-8 bytes), "passkey" (byte-level, one token per word of the passkey texts:
    # data/passkey_tokenizer.py), "checkpoint" (model.init's tokenizer.json), or a tokenizer.json path
    tokenizer: str = "byte"
    seq_len: int = 512
    shuffle: bool = True
    skip_bad: bool = False
    num_workers: int = 0
    passkey: PasskeySection = field(default_factory=PasskeySection)  # data.source=passkey only
    # stages in order; after the last one, the data and comet sections themselves apply
    curriculum: list[StageSection] = field(default_factory=list)


@dataclass(frozen=True)
class OptimSection:
    lr: float = 3e-3
    memory_lr_mult: float = 5.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    warmup_steps: int = 10
    min_lr_ratio: float = 0.0
    # 0: the cosine spans the run; N: the rate is held at lr until the last N steps, which
    # decay it (warm-up / stable / decay)
    decay_steps: int = 0
    clip_norm: float = 1.0  # 0 = no clipping
    # 0: none; d in (0, 1): keep the moving average of the parameters with decay d (a half-life
    # of ln 2 / (1 - d) steps), which is what the finished run exports as RUN_DIR/model
    ema: float = 0.0
    grad_accum: int = 1


@dataclass(frozen=True)
class TrainSection:
    steps: int = 200
    batch_size: int = 8  # global, over all processes
    log_every: int = 10


@dataclass(frozen=True)
class MeshSection:
    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    stage: int = 1
    slices: int = 1  # TPU slices joined over DCN (multi-slice); the data axis spans them
    # logical axis -> mesh axes, over the defaults of parallel/sharding.RULES, e.g.
    # {mlp: "tensor", embed: "fsdp", vocab: ""} ("" = replicated, "data,fsdp" = over both)
    rules: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckpointSection:
    every: int = 100
    keep: int = 3
    async_save: bool = True
    # when checkpoints exist but none can be read: false = stop (exit 2), true = start over
    restart_if_unreadable: bool = False


@dataclass(frozen=True)
class EvalSection:
    """Validation while training: the mean loss of fixed held-out batches."""

    every: int = 0  # optimizer steps between validations (and at the end); 0 = none
    # held-out files in data.source's format (JSONL, or ArrayRecord by name, for the passkey task);
    # empty = the passkey task under another seed (passkey only)
    path: str = ""
    batches: int = 2  # batches of train.batch_size sequences of data.seq_len tokens
    # passkey retrieval at these prompt lengths (tokens) at each validation: eval_passkey_{length}
    passkey_lengths: list[int] = field(default_factory=list)
    passkey_samples: int = 4  # prompts per (length, depth); depths 0, 0.5 and 1


@dataclass(frozen=True)
class LoggingSection:
    tensorboard: bool = True
    jsonl: bool = True
    peak_tflops_per_device: float = 0.0  # 0 = do not report MFU
    # [start, stop]: a jax.profiler trace of optimizer steps start..stop in RUN_DIR/profile
    profile_steps: list[int] = field(default_factory=list)


@dataclass(frozen=True)
class DistributedSection:
    # auto: join a configured or detected cluster (TPU pod, SLURM, Open MPI, JAX_* variables),
    # else one process; always: fail when none is found; never: one process
    init: str = "auto"
    coordinator: str = ""  # empty/0/-1 = from the environment, or a single process
    num_processes: int = 0
    process_id: int = -1


@dataclass(frozen=True)
class TrainConfig:
    run: RunSection = field(default_factory=RunSection)
    model: ModelSection = field(default_factory=ModelSection)
    comet: CometSection = field(default_factory=CometSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    mesh: MeshSection = field(default_factory=MeshSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    logging: LoggingSection = field(default_factory=LoggingSection)
    eval: EvalSection = field(default_factory=EvalSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)


SECTIONS: dict[str, type] = typing.get_type_hints(TrainConfig)
FIELD_TYPES: dict[str, dict[str, Any]] = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
# sections inside a section (data.passkey): set key by key as a section is, section.key.subkey=value
SUBSECTIONS: dict[tuple[str, str], type] = {(name, key): tp for name, types in FIELD_TYPES.items()
                                            for key, tp in types.items() if dataclasses.is_dataclass(tp)}
PASSKEY_KEYS = [f.name for f in dataclasses.fields(PasskeySection)]
STAGE_PASSKEY_KEYS = [f.name for f in dataclasses.fields(StagePasskeySection)]


# ---------------------------------------------------------------------------------------
# the flat passkey keys of older configs (data.passkey_digits, a stage's passkey_shift)


def _where(source: str) -> str:
    return "on the command line" if source == "command line" else f"in {source}"


def _notice(notes: set[str], once: str, text: str) -> None:
    """A deprecation warning on stderr, once per key in one config read (`notes`: those given)."""
    if once not in notes:
        notes.add(once)
        print(f"warning: {text}", file=sys.stderr)


def _flat_passkey(key: str, known: list[str]) -> str | None:
    """'digits' for 'passkey_digits' (when 'digits' is in `known`), else None."""
    sub = key[len("passkey_"):]
    return sub if key.startswith("passkey_") and sub in known else None


def _unflatten(section: str, key: str, notes: set[str], source: str) -> tuple[str, str | None]:
    """data.passkey_X as ("passkey", "X"), with a notice; any other key as (key, None)."""
    sub = _flat_passkey(key, PASSKEY_KEYS) if section == "data" else None
    if sub is None:
        return key, None
    _notice(notes, f"data.{key}", f"data.{key} {_where(source)} is deprecated: write data.passkey.{sub} (read as that)")
    return "passkey", sub


def _unflatten_stage(i: int, item: Any, notes: set[str], source: str) -> Any:
    """A curriculum stage's flat passkey_X keys as its `passkey: {X: ...}`, with a notice; in
    the stage's order, so that of two spellings of one key the later wins."""
    if not isinstance(item, dict):
        return item  # coerce says what a stage must be
    out: dict[Any, Any] = {}
    for k, v in item.items():
        sub = _flat_passkey(str(k), STAGE_PASSKEY_KEYS)
        if sub is not None:
            _notice(notes, f"data.curriculum.{k}", f"data.curriculum[{i}].{k} {_where(source)} is deprecated: write "
                    f"data.curriculum[{i}].passkey.{sub}, i.e. passkey: {{{sub}: ...}} in the stage (read as that)")
            k, v = "passkey", {sub: v}
        if k == "passkey" and isinstance(v, dict) and isinstance(out.get(k), dict):
            v = {**out[k], **v}
        out[k] = v
    return out


# ---------------------------------------------------------------------------------------
# YAML and overrides onto the tree {section: {key: value}}


def _set(tree: dict[str, dict[str, Any]], section: str, key: str, value: Any, source: str,
         notes: set[str] | None = None) -> None:
    if section not in SECTIONS:
        close = difflib.get_close_matches(section, list(SECTIONS), n=1)
        hint = f"; did you mean {close[0]}.{key}?" if close else ""
        raise ConfigError(f"unknown key {section}.{key} (in {source}): there is no section {section}; "
                          f"known sections: {', '.join(SECTIONS)}{hint}")
    types = FIELD_TYPES[section]
    if key not in types:
        raise unknown_key(f"{section}.{key}", list(types), f"keys of {section}", source)
    if (section, key) in SUBSECTIONS:
        _set_subsection(tree, section, key, value, source)
        return
    if (section, key) == ("model", "remat"):
        if isinstance(value, bool):
            value = "full" if value else "none"  # remat: true / false, as configs wrote it before
        elif value not in REMATS:
            raise ConfigError(f"model.remat must be one of {', '.join(REMATS)} (or true/false: full/none), "
                              f"got {value!r} ({type(value).__name__}) in {source}")
    if (section, key) == ("data", "curriculum") and isinstance(value, list):
        notes = set() if notes is None else notes
        value = [_unflatten_stage(i, item, notes, source) for i, item in enumerate(value)]
    tree.setdefault(section, {})[key] = coerce(f"{section}.{key}", types[key], value)


def _set_subsection(tree: dict[str, dict[str, Any]], section: str, key: str, value: Any, source: str) -> None:
    """data.passkey: {digits: 3} sets those keys and keeps the others' values, as a section does."""
    if value is None:  # a subsection whose keys are all commented out
        return
    dotted, hints = f"{section}.{key}", typing.get_type_hints(SUBSECTIONS[section, key])
    if not isinstance(value, dict):
        raise ConfigError(f"{dotted} must be a mapping of its keys ({', '.join(hints)}), e.g. "
                          f"{{{next(iter(hints))}: ...}}; got {value!r} (in {source})")
    body = tree.setdefault(section, {}).setdefault(key, {})
    for k, v in value.items():
        if k not in hints:
            raise unknown_key(f"{dotted}.{k}", list(hints), f"keys of {dotted}", source)
        body[k] = coerce(f"{dotted}.{k}", hints[k], v)


def _merge_yaml(tree: dict[str, dict[str, Any]], data: Any, path: str, notes: set[str]) -> None:
    if data is None:  # empty file
        return
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections "
                          f"({', '.join(SECTIONS)}), got {type(data).__name__}")
    for section, body in data.items():
        if section not in SECTIONS:
            raise unknown_key(str(section), list(SECTIONS), "sections", path)
        if body is None:  # a section whose keys are all commented out
            continue
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: section {section} must be a mapping of keys, got {body!r}")
        for key, value in body.items():
            key, sub = _unflatten(section, str(key), notes, path)
            _set(tree, section, key, value if sub is None else {sub: value}, path, notes)


def _split_key(item: str, dotted: str) -> tuple[str, str, str | None]:
    """(section, key, None) of section.key, or (section, key, subkey) of data.passkey.subkey."""
    parts = dotted.split(".")
    if all(parts) and len(parts) == 2:
        return parts[0], parts[1], None
    if all(parts) and len(parts) == 3:
        if (parts[0], parts[1]) in SUBSECTIONS:
            return parts[0], parts[1], parts[2]
        if parts[0] in SECTIONS and parts[1] not in FIELD_TYPES[parts[0]]:
            raise unknown_key(f"{parts[0]}.{parts[1]}", list(FIELD_TYPES[parts[0]]), f"keys of {parts[0]}",
                              "command line")
    raise ConfigError(f"override {item!r}: the key must be section.key (e.g. train.steps=5), or "
                      f"data.passkey.key for the passkey task (e.g. data.passkey.digits=3); got {dotted!r}")


def _leaf_type(section: str, key: str, sub: str | None) -> Any:
    tp = FIELD_TYPES.get(section, {}).get(key)
    return typing.get_type_hints(tp).get(sub) if sub is not None and dataclasses.is_dataclass(tp) else tp


def _parse_override(tree: dict[str, dict[str, Any]], item: str, notes: set[str] | None = None) -> None:
    notes = set() if notes is None else notes
    if "=" not in item:
        raise ConfigError(f"override {item!r} has no '='; write section.key=value, e.g. optim.lr=1e-4")
    dotted, raw = item.split("=", 1)
    dotted = dotted.strip()
    section, key, sub = _split_key(item, dotted)
    if sub is None:
        key, sub = _unflatten(section, key, notes, "command line")
    try:
        value = yaml.load(raw, Loader=StrictLoader) if raw.strip() else ""
    except DuplicateKey as e:
        raise ConfigError(f"override {dotted}: duplicate key {e.key!r} in {raw.strip()!r}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {dotted}: cannot parse value {raw!r} as YAML: {e}") from None
    if (section, key) == ("model", "remat") and isinstance(value, bool):
        pass  # the older boolean spelling; _set maps it
    elif _leaf_type(section, key, sub) is str and isinstance(value, (bool, int, float)):
        value = raw.strip()  # run.name=2024, data.path=123: keep the text as written
    _set(tree, section, key, value if sub is None else {sub: value}, "command line", notes)


def config_parser(prog: str, doc: str | None):
    """An argument parser with the arguments every command that reads a training config takes
    (`--config FILE` and `section.key=value` overrides); `train_config_checks.load_valid`
    reads them."""
    import argparse

    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", help="YAML file (defaults apply to every key it leaves out)")
    ap.add_argument("overrides", nargs="*", metavar="section.key=value",
                    help="overrides of single keys, e.g. optim.lr=1e-4 mesh.fsdp=4")
    return ap


def load_config(path: str | None, overrides: list[str] = ()) -> TrainConfig:
    """Defaults, then the YAML file at `path` (if any), then `section.key=value` overrides."""
    tree: dict[str, dict[str, Any]] = {}
    notes: set[str] = set()  # the deprecated keys already named
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                data = yaml.load(f, Loader=StrictLoader)
        except DuplicateKey as e:
            raise ConfigError(f"{path}:{e.line}: duplicate key {e.key!r} (first at line {e.first})") from None
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except OSError as e:
            raise ConfigError(f"config file {path} cannot be read: {e}") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
        _merge_yaml(tree, data, path, notes)
    for item in overrides or ():
        _parse_override(tree, item, notes)
    if tree.get("run", {}).get("dir"):
        # absolute and without `..`: Orbax and TensorStore refuse some relative paths (the
        # final export did), and the run's files are then named the same from anywhere
        tree["run"]["dir"] = os.path.abspath(tree["run"]["dir"])
    return from_dict(tree)


def from_dict(tree: dict[str, dict[str, Any]]) -> TrainConfig:
    """A TrainConfig from {section: {key: value}} (already type-checked by `_set`; a
    subsection such as data.passkey as a mapping of its keys)."""
    def section(name: str, cls: type) -> Any:
        body = dict(tree.get(name, {}))
        for (owner, key), sub in SUBSECTIONS.items():
            if owner == name and isinstance(body.get(key), dict):
                body[key] = sub(**body[key])
        return cls(**body)

    return TrainConfig(**{name: section(name, cls) for name, cls in SECTIONS.items()})


def to_dict(cfg: TrainConfig) -> dict[str, dict[str, Any]]:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: TrainConfig) -> str:
    """The whole resolved config as YAML (for --print-config and <run dir>/config.yaml). For a
    data.source other than passkey, the passkey settings are left out while at their defaults
    (validate refuses other values there), as are eval's passkey probe settings while it is off,
    so a JSONL run's config shows none of them and `load_config` of the text still gives `cfg` back."""
    tree = to_dict(cfg)
    if cfg.data.source != "passkey":
        _drop_default_passkey(tree["data"])
    if not cfg.eval.passkey_lengths and cfg.eval.passkey_samples == EvalSection.passkey_samples:
        del tree["eval"]["passkey_lengths"], tree["eval"]["passkey_samples"]  # no passkey probe: nothing to say
    return yaml.safe_dump(tree, sort_keys=False, default_flow_style=False)


def _drop_default_passkey(data: dict[str, Any]) -> None:
    if data["passkey"] == dataclasses.asdict(PasskeySection()):
        del data["passkey"]
    for stage in data["curriculum"]:
        if stage["passkey"] == dataclasses.asdict(StagePasskeySection()):
            del stage["passkey"]


def run_dir(cfg: TrainConfig) -> str:
    """The run directory, absolute and normalised (no `..`): run.dir, else runs/{run.name}."""
    return os.path.abspath(cfg.run.dir or os.path.join("runs", cfg.run.name))
