"""What an export reads: a converted checkpoint (DIR/comet_jax.json + DIR/params) or a
training run (RUN_DIR/config.yaml + RUN_DIR/checkpoints/STEP), as one `Source`.

A run's checkpoints are opened read-only (the trainer may still be writing the next one).
The newest step whose metadata reads is used unless --step names one; its parameters are
checked against the digest the trainer recorded while they are read (`leaves.OrbaxLeaves`).
The configs come from the run's config.yaml, through the trainer's own `build_model`, and
are checked against the checkpoint's recorded shapes.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from comet_jax.checkpoint import ITEM_DIR, META_FILE, PARAMS_DIR, read_meta
from comet_jax.config import CometConfig, ModelConfig
from comet_jax.convert.tokenizer_files import TOKENIZER_FILES
from comet_jax.export import ExportError
from comet_jax.export.leaves import OrbaxLeaves


@dataclass
class Source:
    label: str  # "checkpoint DIR" / "run DIR, step N", for messages
    model: ModelConfig
    comet: CometConfig
    leaves: OrbaxLeaves
    hf_config: dict[str, Any] | None = None  # the source HF config.json the conversion kept
    max_position_embeddings: int | None = None
    side_files: list[Path] = field(default_factory=list)  # tokenizer files, generation_config.json
    save_tokenizer: Callable[[Path], Any] | None = None  # writes a tokenizer with the CoMeT tokens

    def write_side_files(self, directory: Path) -> None:
        if self.save_tokenizer is not None:
            self.save_tokenizer(directory)
        for f in self.side_files:
            if not (directory / f.name).exists():  # a tokenizer just saved stays
                shutil.copy2(f, directory / f.name)


def open_source(src: Path, step: int | None = None, log: Callable[[str], None] = print, raw: bool = False) -> Source:
    """raw: a run trained with optim.ema gives its checkpoint's raw parameters, not the weight
    average (the default, as in RUN_DIR/model)."""
    if not src.is_dir():
        raise ExportError(f"SRC {src} does not exist or is not a directory")
    if (src / META_FILE).is_file():
        if step is not None or raw:
            raise ExportError(f"--{'step' if step is not None else 'raw'} is for a training run directory; {src} is a "
                              "converted checkpoint")
        return _checkpoint(src)
    if (src / "checkpoints").is_dir():
        return _run(src, step, log, raw)
    raise ExportError(f"{src} is neither a converted checkpoint (no {META_FILE}) nor a training run directory "
                      "(no checkpoints/)")


def _checkpoint(src: Path) -> Source:
    model, comet, meta = read_meta(src)
    label = f"checkpoint {src}"
    return Source(label, model, comet, OrbaxLeaves(src / PARAMS_DIR / ITEM_DIR, label=label),
                  hf_config=meta.get("hf_config"), max_position_embeddings=meta.get("max_position_embeddings"),
                  side_files=[src / n for n in TOKENIZER_FILES if (src / n).is_file()])


def _run(src: Path, step: int | None, log: Callable[[str], None], raw: bool) -> Source:
    if not (src / "config.yaml").is_file():
        raise ExportError(f"{src} has checkpoints/ but no config.yaml: it is not a training run directory")
    from comet_jax.train.train_config import load_config
    from comet_jax.train.run_setup import build_model, carried_from_init, load_tokenizer, save_tokenizer

    cfg = load_config(str(src / "config.yaml"))
    step, meta = _pick_step(src / "checkpoints", step, log)
    if cfg.model.init != "scratch" and not (Path(cfg.model.init) / META_FILE).is_file():
        raise ExportError(f"the run started from model.init={cfg.model.init}, which is no longer a converted "
                          "checkpoint; its configs (token ids, shape) are needed")
    tokenizer = load_tokenizer(cfg)
    model, comet = build_model(cfg, tokenizer)
    _check_shapes(model, comet, meta, f"{src}/config.yaml", step)
    carried, files = carried_from_init(cfg)
    label = f"run {src}, step {step}"
    root = "['params']"
    if cfg.optim.ema and not raw:
        root = _ema_root(meta, src, step)
        label += " (the weight average, optim.ema)"
    digests = {k: v for k, v in meta.get("digest", {}).items() if k.startswith(root + "[")}
    leaves = OrbaxLeaves(src / "checkpoints" / str(step) / "state", prefix=_orbax_prefix(root), digests=digests,
                         label=label, digest_root=root)
    own = None if cfg.data.tokenizer == "checkpoint" else (lambda d: save_tokenizer(tokenizer, d, comet, log))
    return Source(label, model, comet, leaves, hf_config=carried.get("hf_config"),
                  max_position_embeddings=carried.get("max_position_embeddings"), side_files=files,
                  save_tokenizer=own)


def _ema_root(meta: dict[str, Any], src: Path, step: int) -> str:
    """The keystr of the weight average in a checkpoint's state ("['opt_state'][2].ema")."""
    found = sorted({m.group(1) for k in meta.get("shapes", {}) for m in [re.match(r"^(\['opt_state'\].*\.ema)\[", k)]
                    if m})
    if len(found) != 1:
        raise ExportError(f"the run {src} was trained with optim.ema but checkpoint step {step} holds "
                          f"{len(found)} weight averages, not one; pass --raw to export its raw parameters")
    return found[0]


def _orbax_prefix(root: str) -> str:
    """The Orbax path of a keystr root: "['opt_state'][2].ema" -> "opt_state.2.ema."."""
    return "".join(f"{a or b or c}." for a, b, c in re.findall(r"\['([^']*)'\]|\[(\d+)\]|\.(\w+)", root))


def _pick_step(directory: Path, step: int | None, log: Callable[[str], None]) -> tuple[int, dict[str, Any]]:
    """(step, its meta): the one asked for, or the newest whose meta reads."""
    import orbax.checkpoint as ocp

    from comet_jax.train.train_checkpoint import TrainCheckpointer, root_cause

    ckpt = TrainCheckpointer(directory, read_only=True)
    try:
        steps = ckpt.steps()
        if not steps:
            raise ExportError(f"{directory} holds no checkpoint yet")
        if step is not None and step not in steps:
            raise ExportError(f"--step {step} is not a checkpoint in {directory} (steps: {', '.join(map(str, steps))})")
        for s in [step] if step is not None else reversed(steps):
            try:
                meta = ckpt.manager.restore(s, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
                return s, meta
            except Exception as e:  # noqa: BLE001 - an unreadable step: say so, try the one before
                if step is not None:
                    raise ExportError(f"checkpoint step {s} in {directory} cannot be read ({root_cause(e)})") from None
                log(f"checkpoint step {s} in {directory} cannot be read ({root_cause(e)}); trying the previous one")
        raise ExportError(f"no checkpoint in {directory} can be read")
    finally:
        ckpt.close(raise_errors=False)


def _check_shapes(model: ModelConfig, comet: CometConfig, meta: dict[str, Any], where: str, step: int) -> None:
    """The configs rebuilt from config.yaml must give the parameters the checkpoint holds."""
    from comet_jax.export.tensors import expected_shapes

    want = {"['params']" + "".join(f"['{k}']" for k in p.split(".")): list(s)
            for p, s in expected_shapes(model, comet).items()}
    saved = {k: v[0] for k, v in meta.get("shapes", {}).items() if k.startswith("['params']")}
    if saved and saved != want:
        diff = sorted(k for k in set(want) | set(saved) if want.get(k) != saved.get(k))[0]
        raise ExportError(f"{where} does not describe checkpoint step {step}: {diff} is {saved.get(diff, 'absent')} "
                          f"there, {want.get(diff, 'absent')} from the config")
