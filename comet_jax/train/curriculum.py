"""The data curriculum as it runs: which stage (sequence length, chunk size, passkey options)
an optimizer step trains on, each stage's inherited settings filled in (a stage leaves a
setting at its "inherit" value: chunk_size 0, passkey min_len 0, needles 0, shift -1,
wording "", near -1), and a readable account of the whole schedule for --print-config."""

from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    """What the data curriculum asks for at one optimizer step."""

    index: int
    seq_len: int
    chunk_size: int
    min_len: int  # shortest passkey example (0: seq_len)
    needles: int = 1  # most passkey episodes per sequence
    shift: int = 0  # most filler tokens moving a passkey sequence against the chunk grid
    wording: str = "fixed"  # the passkey questions' wordings
    near: float = 0.0  # the share of passkey needles right before their question

    @property
    def passkey_min_len(self) -> int:
        """The shortest passkey example this stage draws: min_len (0: seq_len), at most seq_len."""
        return min(self.min_len or self.seq_len, self.seq_len)


def curriculum_stage(cfg, step: int) -> Stage:
    """The curriculum stage at an optimizer step (after the last listed stage: the data and
    comet sections themselves)."""
    d, c, p = cfg.data, cfg.comet, cfg.data.passkey
    for i, item in enumerate(d.curriculum):
        if step < item.until_step:
            s = item.passkey
            return Stage(i, item.seq_len, item.chunk_size or c.chunk_size, s.min_len or p.min_len,
                         s.needles or p.needles, p.shift if s.shift < 0 else s.shift, s.wording or p.wording,
                         p.near if s.near < 0 else s.near)
    return Stage(len(d.curriculum), d.seq_len, c.chunk_size, p.min_len, p.needles, p.shift, p.wording, p.near)


def describe_curriculum(cfg) -> list[str]:
    """One line per stage that runs within train.steps: its steps (numbered from 1, as the log
    and the checkpoints count them) and its settings, inherited ones filled in (no lines when
    there is no curriculum)."""
    if not cfg.data.curriculum:
        return []
    starts = [0] + [item.until_step for item in cfg.data.curriculum]
    lines = []
    for start, end in zip(starts, starts[1:] + [cfg.train.steps]):
        if start >= min(end, cfg.train.steps):
            continue  # an empty stage, or one after the last step
        s = curriculum_stage(cfg, start)
        what = f"seq_len {s.seq_len}" + ("" if cfg.comet.mode == "full" else f", chunk_size {s.chunk_size}")
        if cfg.data.source == "passkey":
            what += (f"; passkey min_len {s.passkey_min_len}, needles {s.needles}, "
                     f"shift {s.shift}, wording {s.wording}, near {s.near:g}")
        lines.append(f"steps {start + 1}-{min(end, cfg.train.steps)}: {what}")
    return lines
