"""Run metrics: one console line per log step, a JSONL file and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any



class MetricsWriter:
    def __init__(self, run_dir: str | Path, *, jsonl: bool = True, tensorboard: bool = True, enabled: bool = True):
        self.enabled = enabled
        run_dir = Path(run_dir)
        self.jsonl = (run_dir / "metrics.jsonl").open("a") if enabled and jsonl else None
        self.tb = None
        if enabled and tensorboard:
            from tensorboardX import SummaryWriter

            self.tb = SummaryWriter(str(run_dir / "tensorboard"))

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
