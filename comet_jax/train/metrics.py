"""Run metrics: one console line per log step, a JSONL file and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from comet_jax.evals.common import atomic_write


def drop_steps_after(path: str | Path, step: int) -> int:
    """Remove the records of steps after `step` from a metrics.jsonl (and a line cut off by a
    crash), rewriting it atomically: a run resumed from the checkpoint of `step` writes those
    steps again. Returns how many lines were dropped."""
    path = Path(path)
    if not path.is_file():
        return 0
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            dropped += 1
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), (int, float)) and rec["step"] > step:
            dropped += 1
            continue
        keep.append(line)
    if dropped:
        atomic_write(path, "".join(line + "\n" for line in keep).encode())
    return dropped


class MetricsWriter:
    """`resume_step`: the run resumed from the checkpoint of this step, so the records of later
    steps (written before a crash) are dropped from metrics.jsonl and TensorBoard: each step
    is in the metrics once."""

    def __init__(self, run_dir: str | Path, *, jsonl: bool = True, tensorboard: bool = True, enabled: bool = True,
                 resume_step: int | None = None):
        self.enabled = enabled
        run_dir = Path(run_dir)
        if enabled and jsonl and resume_step is not None:
            drop_steps_after(run_dir / "metrics.jsonl", resume_step)
        self.jsonl = (run_dir / "metrics.jsonl").open("a") if enabled and jsonl else None
        self.tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            purge = None if resume_step is None else resume_step + 1  # events of steps >= this are dropped
            self.tb = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge)

    def write(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) or hasattr(v, "item") else v)
                 for k, v in metrics.items() if v is not None}
        if self.jsonl:
            self.jsonl.write(json.dumps({"step": step, **clean}) + "\n")
            self.jsonl.flush()
        if self.tb:
            for k, v in clean.items():
                if isinstance(v, float) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
            self.tb.flush()

    def close(self) -> None:
        if self.jsonl:
            self.jsonl.close()
        if self.tb:
            self.tb.close()


def format_line(step: int, total: int, m: dict[str, Any]) -> str:
    parts = [f"step {step}/{total}", f"loss {m['loss']:.4f}", f"lr {m['lr']:.2e}", f"gnorm {m['grad_norm']:.3f}",
             f"{m['tokens_per_s']:.0f} tok/s", f"{m['step_time']:.2f}s/step"]
    if m.get("mfu") is not None:
        parts.append(f"MFU {100 * m['mfu']:.1f}%")
    if m.get("memory_mb") is not None:
        parts.append(f"mem {m['memory_mb']:.0f}MB")
    return "  ".join(parts)
