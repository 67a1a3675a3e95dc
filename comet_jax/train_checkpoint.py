"""Training checkpoints with Orbax's CheckpointManager: the train state (params,
optimizer state, step), the data iterator state and a little metadata, saved every N
steps (asynchronously), keeping the newest K. Restore falls back to an older step when
the newest cannot be read (truncated or corrupt), and restores onto any mesh: the
target shardings come from the current run, not from the checkpoint."""

from __future__ import annotations

import base64
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


def _encode(data_state: Any) -> Any:
    """Grain iterator states may be bytes; JSON needs text."""
    if isinstance(data_state, (bytes, bytearray)):
        return {"__bytes_b64__": base64.b64encode(bytes(data_state)).decode()}
    return data_state


def _decode(data_state: Any) -> Any:
    if isinstance(data_state, dict) and "__bytes_b64__" in data_state:
        return base64.b64decode(data_state["__bytes_b64__"])
    return data_state


class TrainCheckpointer:
    def __init__(self, directory: str | Path, *, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: dict, data_state: Any, meta: dict[str, Any], force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave({"state": _encode(data_state)}),
            meta=ocp.args.JsonSave(meta)), force=force)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore_latest(self, abstract_state: Any, log=lambda m: print(m, file=sys.stderr)):
        """(step, state, data_state, meta) of the newest readable checkpoint, or None.

        `abstract_state` is a tree of jax.ShapeDtypeStruct with the target shardings."""
        for step in reversed(self.steps()):
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore(),
                    meta=ocp.args.JsonRestore()))
            except Exception as e:  # noqa: BLE001 - any failure to read means: try the previous one
                aside = self.directory.parent / "corrupt_checkpoints" / str(step)
                log(f"checkpoint at step {step} failed to restore ({type(e).__name__}: {str(e)[:200]}); "
                    f"moved to {aside}; trying the previous one")
                # out of the manager's directory, so the step can be saved again
                aside.parent.mkdir(parents=True, exist_ok=True)
                shutil.rmtree(aside, ignore_errors=True)
                shutil.move(str(self.directory / str(step)), str(aside))
                self.manager.reload()
                continue
            return step, restored["state"], _decode(restored["data"]["state"]), restored["meta"]
        return None

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
