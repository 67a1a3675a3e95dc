"""Training checkpoints with Orbax's CheckpointManager: the train state (params,
optimizer state, step), the data iterator state and a little metadata, saved every N
steps (asynchronously), keeping the newest K.

What a mistake may not cost, and how:
- Each checkpoint's meta records the run's model-defining settings and every leaf's shape
  and dtype; a resume with other settings is refused before anything is restored or moved
  (`CheckpointMismatch`), so a typo on the command line cannot condemn good checkpoints.
- Each checkpoint's meta records a digest of every array (two wrap-around integer sums of
  the raw bits, computed on the devices: exact and independent of the mesh). A restored
  state whose digest differs, or that cannot be read, is moved aside to a new name in
  `corrupt_checkpoints/` (nothing is ever deleted) and the previous step is tried; when none
  restores, `NoReadableCheckpoint` stops the run unless starting over was asked for.
- A state with non-finite parameters is never saved (`NonFiniteState`), so every step on
  disk is one to come back to.
- A failed save (disk full, permissions) is one `CheckpointSaveError` naming the step, the
  path and the last good step; Orbax writes into a temporary directory, so the failed step
  never appears as a checkpoint.
Restore works onto any mesh: the target shardings come from the current run."""

from __future__ import annotations

import base64
import logging
import os
import re
import shutil
import sys
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from comet_jax.config import ConfigError

ASIDE_DIR = "corrupt_checkpoints"
# files of a step without which its state cannot be restored as saved (Orbax's tree metadata)
REQUIRED_FILES = ("state/_METADATA",)


class CheckpointMismatch(ConfigError):
    """The checkpoint was written by a run with other model settings; nothing was changed."""


class NoReadableCheckpoint(RuntimeError):
    """Checkpoints exist but none could be restored (all were moved aside)."""


class CheckpointSaveError(RuntimeError):
    """Writing a checkpoint failed; the message names the step, the path and the last good step."""


class NonFiniteState(RuntimeError):
    """The parameters or optimizer state hold NaN/Inf; such a state is not saved."""


def _encode(data_state: Any) -> Any:
    """Grain iterator states may be bytes; JSON needs text."""
    if isinstance(data_state, (bytes, bytearray)):
        return {"__bytes_b64__": base64.b64encode(bytes(data_state)).decode()}
    return data_state


def _decode(data_state: Any) -> Any:
    if isinstance(data_state, dict) and "__bytes_b64__" in data_state:
        return base64.b64decode(data_state["__bytes_b64__"])
    return data_state


def leaf_paths(tree: Any) -> dict[str, Any]:
    """{"['params']['embed']": leaf, ...} in tree order."""
    return {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def shapes_of(tree: Any) -> dict[str, list]:
    return {k: [list(x.shape), str(jnp.dtype(x.dtype))] for k, x in leaf_paths(tree).items()}


def _bits(x: jax.Array) -> jax.Array:
    """The raw bits of `x` as uint32 (narrower types widened, wider ones split)."""
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    width = jnp.dtype(x.dtype).itemsize
    if width == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    return jax.lax.bitcast_convert_type(x, {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[width]).astype(jnp.uint32)


@jax.jit
def _digest(tree: Any) -> tuple[Any, Any]:
    """Per leaf: (sum of bits, sum of bits * (2i+1)) mod 2**32, and whether it is finite.
    Integer sums are exact in any reduction order, so the digest does not depend on the mesh;
    the position-weighted sum also catches values moved within a leaf."""
    def one(x):
        b = _bits(x).reshape(-1)
        odd = jnp.arange(b.size, dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
        return jnp.stack([jnp.sum(b, dtype=jnp.uint32), jnp.sum(b * odd, dtype=jnp.uint32)])

    def finite(x):
        return jnp.all(jnp.isfinite(x)) if jnp.issubdtype(x.dtype, jnp.inexact) else jnp.bool_(True)

    return jax.tree.map(one, tree), jax.tree.map(finite, tree)


def _host(x: jax.Array) -> np.ndarray:
    # replicated outputs: every process holds the whole value in its first local shard
    return np.asarray(x.addressable_data(0))


def digest(tree: Any) -> tuple[dict[str, list[int]], list[str]]:
    """({leaf path: [sum, weighted sum]}, [paths of leaves holding NaN/Inf])."""
    sums, finite = _digest(tree)
    sums = {k: [int(v) for v in _host(s)] for k, s in leaf_paths(sums).items()}
    bad = [k for k, f in leaf_paths(finite).items() if not bool(_host(f))]
    return sums, bad


def root_cause(e: BaseException) -> str:
    """'[Errno 28] No space left on device' where the error (or one it came from) carries an
    OS error code (Tensorstore writes it as os_error_code='28'), else the first line of e."""
    seen, cur, best = set(), e, None
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        code = re.search(r"os_error_code='?(\d+)", str(cur))
        if code:
            return f"[Errno {code.group(1)}] {os.strerror(int(code.group(1)))}"
        if isinstance(cur, OSError):
            best = cur
        cur = cur.__cause__ or cur.__context__
    chosen = best or e
    text = f"{type(chosen).__name__}: {chosen}" if best is None else str(chosen)
    return text.splitlines()[0][:300] if text else type(chosen).__name__


def _reason(error: BaseException, limit: int = 200) -> str:
    """Why a checkpoint cannot be used, in one line: the first line of the error (Orbax's
    pytree errors run over many), cut at `limit` characters with an ellipsis."""
    if isinstance(error, FileNotFoundError) and str(error).startswith("its file"):
        return str(error)
    text = (str(error).strip().splitlines() or [""])[0].strip()
    text = text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def mismatch_message(saved: dict, current: dict, limit: int = 4) -> list[str]:
    """'key: A in the checkpoint, B now' for the keys that differ (parameters first, at most `limit`)."""
    keys = sorted(set(saved) | set(current), key=lambda k: (not k.startswith("['params']"), k))
    diffs = [f"{k}: {_short(saved.get(k, 'absent'))} in the checkpoint, {_short(current.get(k, 'absent'))} now"
             for k in keys if saved.get(k) != current.get(k)]
    return diffs[:limit] + ([f"{len(diffs) - limit} more"] if len(diffs) > limit else [])


def _short(value: Any) -> str:
    """A [shape, dtype] pair as 'float32[512, 32]'; anything else as itself."""
    if isinstance(value, list) and len(value) == 2 and isinstance(value[0], list):
        return f"{value[1]}{value[0]}"
    return str(value)


class TrainCheckpointer:
    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True, read_only: bool = False):
        """`read_only`: for readers of a run that may still be training (the export): nothing is
        created, and a save in progress (Orbax's temporary directory) is left alone."""
        self.directory = Path(os.path.abspath(directory))  # normalised: no `..` for Orbax
        if read_only:  # Orbax warns that the directory is read-only, which is what was asked for
            logging.getLogger("absl").addFilter(_READ_ONLY_FILTER)
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=not read_only, cleanup_tmp_directories=not read_only,
                                               read_only=read_only)
        self.manager = ocp.CheckpointManager(self.directory, options=options)
        # Orbax removes the temporary directories of unfinished saves in a background thread and
        # only waits for it on the first save: wait here, so a fresh checkpointer never lists them
        await_cleanup = getattr(self.manager, "_maybe_await_cleanup_tmp_directory", None)
        if await_cleanup is not None:
            await_cleanup()
        for name in _FILTERED:  # kept after close: abandoned writes may still report at exit
            logging.getLogger(name).addFilter(_FILTER)
        if not hasattr(sys.unraisablehook, "previous"):
            sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)
        self._pending: int | None = None  # step of the save still in flight
        self._failed_steps: list[int] = []  # their temporary directories are removed on close

    # -- saving ----------------------------------------------------------------------------
    def last_good(self) -> str:
        """The newest complete checkpoint (for a failed save: it was written whole and verified
        on restore; whether its training was still healthy is another question, see `newest`)."""
        steps = self.steps()
        return (f"the last good checkpoint is step {steps[-1]} ({self.directory / str(steps[-1])})" if steps
                else f"there is no earlier checkpoint in {self.directory}")

    def newest(self) -> str:
        """The newest checkpoint, named without calling it good: a saved state is known to be
        finite, not to come from before a divergence."""
        steps = self.steps()
        return (f"the newest checkpoint is step {steps[-1]} ({self.directory / str(steps[-1])})" if steps
                else f"there is no checkpoint in {self.directory}")

    def _failed(self, step: int, e: BaseException) -> CheckpointSaveError:
        self._failed_steps.append(step)
        # after a failed write, Orbax's coroutines still queued for its closed event loop are
        # dropped at exit, and Python prints a warning for each below the one-line error
        warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited", category=RuntimeWarning)
        return CheckpointSaveError(f"saving checkpoint step {step} to {self.directory / str(step)} failed: "
                                   f"{root_cause(e)}; {self.last_good()}")

    def save(self, step: int, state: dict, data_state: Any, meta: dict[str, Any], force: bool = False) -> bool:
        """Save `state` as `step` (the meta gains the shapes and the digest). Raises
        NonFiniteState before writing a state that holds NaN/Inf, CheckpointSaveError when
        this save (or the previous asynchronous one) fails."""
        self.wait()
        sums, bad = digest(state)
        if bad:
            raise NonFiniteState(f"the state at step {step} holds NaN/Inf (in {', '.join(bad[:3])}); it was "
                                 f"not saved; {self.newest()}")
        meta = {**meta, "shapes": shapes_of(state), "digest": sums}
        try:
            saved = self.manager.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"state": _encode(data_state)}),
                meta=ocp.args.JsonSave(meta)), force=force)
        except Exception as e:  # noqa: BLE001 - any failure to write is reported the same way
            raise self._failed(step, e) from None
        self._pending = step if saved else None
        return saved

    def wait(self) -> None:
        """Wait for an asynchronous save; CheckpointSaveError if it failed."""
        try:
            self.manager.wait_until_finished()
        except Exception as e:  # noqa: BLE001
            step, self._pending = self._pending, None
            raise self._failed(step if step is not None else -1, e) from None
        self._pending = None

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    # -- restoring -------------------------------------------------------------------------
    def _move_aside(self, step: int) -> Path:
        """Move a step out of the manager's directory (so it can be saved again) to a name
        no earlier move used: nothing moved aside is ever overwritten."""
        base = self.directory.parent / ASIDE_DIR
        base.mkdir(parents=True, exist_ok=True)
        aside, n = base / str(step), 1
        while aside.exists():
            aside, n = base / f"{step}.{n}", n + 1
        shutil.move(str(self.directory / str(step)), str(aside))
        self.manager.reload()
        return aside

    def check_compatible(self, step: int, meta: dict, abstract_state: Any, identity: dict[str, Any],
                         config: dict[str, Any]) -> None:
        """CheckpointMismatch when `step` was written with other model settings or leaf shapes."""
        where = f"the checkpoint at step {step} in {self.directory}"
        fix = "; resume with the settings it was written with, or start a new run with another run.dir. Nothing was changed"
        diffs = mismatch_message(meta.get("identity", identity), identity)
        if diffs:
            raise CheckpointMismatch(f"{where} was written with other settings ({'; '.join(diffs)}){fix}")
        current = shapes_of(abstract_state)
        if "shapes" in meta and meta["shapes"] != current:
            leaves = mismatch_message(meta["shapes"], current, limit=2)
            settings = mismatch_message(meta.get("config", config), config, limit=6)
            hint = f"; settings that differ from the run that wrote it: {'; '.join(settings)}" if settings else ""
            raise CheckpointMismatch(f"{where} holds a state of another structure ({'; '.join(leaves)}){hint}{fix}")

    def restore_latest(self, abstract_state: Any, identity: dict[str, Any] | None = None,
                       config: dict[str, Any] | None = None, restart_if_unreadable: bool = False,
                       log: Callable[[str], None] = None):
        """(step, state, data_state, meta) of the newest readable checkpoint, or None when there
        is none. `abstract_state`: jax.ShapeDtypeStruct leaves with the target shardings;
        `identity`: the model-defining settings the checkpoint must have been written with;
        `config`: all of the run's settings (named in the message when the structure differs).
        The meta of a checkpoint saved by `save` should carry both as "identity" and "config"."""
        log = log or (lambda m: print(m, file=sys.stderr))
        identity, config = identity or {}, config or {}
        moved = []
        for step in reversed(self.steps()):
            try:
                meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
            except Exception as e:  # noqa: BLE001 - an unreadable meta: the state cannot be trusted either
                meta, error = None, e
            if meta is not None:
                self.check_compatible(step, meta, abstract_state, identity, config)
                try:
                    missing = [f for f in REQUIRED_FILES if not (self.directory / str(step) / f).is_file()]
                    if missing:  # Orbax would fail on it with a pytree error, or guess the tree
                        raise FileNotFoundError(f"its file {missing[0]} is missing")
                    restored = self.manager.restore(step, args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
                    if "digest" in meta:
                        sums, _ = digest(restored["state"])
                        wrong = [k for k in meta["digest"] if sums.get(k) != meta["digest"][k]]
                        if wrong:
                            raise ValueError(f"its arrays differ from what was saved (digest of {wrong[0]}"
                                             f"{f' and {len(wrong) - 1} more' if len(wrong) > 1 else ''})")
                    return step, restored["state"], _decode(restored["data"]["state"]), meta
                except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
                    error = e
            aside = self._move_aside(step)
            moved.append(step)
            log(f"checkpoint at step {step} cannot be used ({_reason(error)}); moved {self.directory / str(step)} "
                f"to {aside}; trying the previous one")
        if moved and not restart_if_unreadable:
            raise NoReadableCheckpoint(
                f"no checkpoint in {self.directory} could be read (steps {', '.join(map(str, moved))} were moved "
                f"to {self.directory.parent / ASIDE_DIR}); set checkpoint.restart_if_unreadable=true to start "
                "over from step 0")
        return None

    def close(self, raise_errors: bool = True) -> None:
        try:
            self.wait()
        except CheckpointSaveError:
            if raise_errors:
                raise
        finally:
            try:
                self.manager.close()
            except Exception:  # noqa: BLE001 - a failed save was reported by wait()
                pass
            # what a failed save wrote takes space (best effort: a writer thread of Orbax may still
            # be finishing; Orbax removes what is left when the next run opens the directory)
            for step in self._failed_steps:
                for tmp in self.directory.glob(f"{step}.orbax-checkpoint-tmp*"):
                    shutil.rmtree(tmp, ignore_errors=True)


class _OrbaxErrorFilter(logging.Filter):
    """Orbax logs every failure of its writer threads with a full traceback (hundreds of
    lines for one full disk), and asyncio adds "Task exception was never retrieved" for its
    abandoned writes; the checkpointer reports each failure in one line instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.ERROR:
            return True
        if "orbax" in record.pathname:
            return False
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        return "orbax" not in text


_FILTER = _OrbaxErrorFilter()


class _ReadOnlyNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "read only" not in text and "read_only=True" not in text


_READ_ONLY_FILTER = _ReadOnlyNotice()
_FILTERED = ("absl", "asyncio")


def _quiet_unraisable(previous):
    """After a failed asynchronous write, a Tensorstore callback still posts to Orbax's
    closed event loop; Python prints that as a stray traceback. Drop just that one."""
    def hook(unraisable):
        if not (isinstance(unraisable.exc_value, RuntimeError) and "Event loop is closed" in str(unraisable.exc_value)):
            previous(unraisable)
    hook.previous = previous
    return hook


def abstract_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
