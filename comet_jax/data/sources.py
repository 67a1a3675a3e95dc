"""Record sources of the training data pipeline (comet_jax/data/pipeline.py) and `make_source`.

Sources are random-access (`__len__`, `__getitem__`) and return records
`{"input_ids": int32 [n], "loss_mask": bool [n] (optional)}`:

- `PasskeySource` (`comet_jax.data.passkey`): synthetic, a pure function of (seed, index);
- `JsonlSource`: one `{"input_ids": [...]}` (optionally with `labels` or `loss_mask`:
  comet_jax/data/jsonl.py) or `{"text": ...}` object a line; the file is
  scanned once for line offsets, records are read and validated on access;
- `ArrayRecordSource`: ArrayRecord files whose records are the same JSON objects (bytes);
- `ConcatSource` (several files one after another), `MixtureSource` (weighted: data/mixture.py).

A bad record raises `DataError` naming file:line (file:record for ArrayRecord), or with
`skip_bad=True` is skipped and counted (`Loader.stats["bad"]`); the first few skipped records
of each process are named on stderr. With `max_tokens` (the training sequence length) a long
text document has only a prefix tokenised; `reserved` token ids (CoMeT's own rows) are bad.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import Any, Mapping, Sequence

import grain
import numpy as np

from comet_jax.config import SOURCES
from comet_jax.data.files import data_files
from comet_jax.data.jsonl import DataError, parse_bytes
from comet_jax.data.mixture import MixtureSource
from comet_jax.data.passkey import PasskeySource


# --------------------------------------------------------------------------- record parsing

def _bad_record(where: str) -> dict[str, Any]:
    return {"input_ids": np.zeros(0, np.int32), "bad": where}


_NAMED_SKIPS = 5  # skipped records named on stderr, per process
_named = {"count": 0}


def _decode_record(raw: bytes, where: str, tokenizer: Any, vocab_size: int | None, skip_bad: bool,
                   max_tokens: int | None = None, reserved: Mapping[int, str] | None = None) -> dict[str, Any]:
    """JSON bytes -> {"input_ids", "loss_mask" (when the record has labels or a loss_mask)}; a bad
    record raises DataError or, with skip_bad, is marked."""
    try:
        # documents shorter than 2 tokens are valid records: dropped and counted downstream
        ids, mask = parse_bytes(raw, where, tokenizer, vocab_size, min_tokens=0, max_tokens=max_tokens,
                                reserved=reserved, with_mask=True)
    except DataError as e:
        if not skip_bad:
            raise
        if _named["count"] < _NAMED_SKIPS:
            _named["count"] += 1
            more = " (further skips are only counted)" if _named["count"] == _NAMED_SKIPS else ""
            print(f"skipping bad record {e}{more}", file=sys.stderr, flush=True)
        return _bad_record(where)
    return {"input_ids": ids} if mask is None else {"input_ids": ids, "loss_mask": mask}


# --------------------------------------------------------------------------- sources

class JsonlSource:
    """Random access over a JSONL file: the file is scanned once for line offsets.

    `num_bad` counts the bad records this process has skipped (with skip_bad); with worker
    processes use `Loader.stats["bad"]`, which counts them wherever they were read.
    """

    def __init__(self, path: str | os.PathLike, tokenizer: Any = None, vocab_size: int | None = None,
                 skip_bad: bool = False, max_tokens: int | None = None, reserved: Mapping[int, str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such file")
        self.tokenizer, self.vocab_size, self.skip_bad = tokenizer, vocab_size, bool(skip_bad)
        self.max_tokens, self.reserved = max_tokens, dict(reserved or {})
        data = np.fromfile(self.path, dtype=np.uint8)
        ends = np.flatnonzero(data == ord("\n")) + 1
        starts = np.concatenate([[0], ends])
        if starts[-1] == len(data):  # the file ends with a newline: no line after it
            starts = starts[:-1]
        self._starts = starts.astype(np.int64)
        self._ends = np.append(self._starts[1:], len(data)).astype(np.int64)
        self._size = len(data)
        self._file = None
        self._pid = None
        self._lock = threading.Lock()
        self.num_bad = 0
        if len(self._starts) == 0:
            raise DataError(f"{self.path}: the file is empty")

    def __len__(self) -> int:
        return len(self._starts)

    def __repr__(self) -> str:
        return (f"JsonlSource(path={str(self.path)!r}, records={len(self)}, bytes={self._size}, "
                f"skip_bad={self.skip_bad}, vocab_size={self.vocab_size})")

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, None
        del state["_lock"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def _read(self, index: int) -> bytes:
        # grain reads records from several threads: a positional read (pread) is atomic,
        # where seek + read on a shared handle races and returns another record's bytes.
        # The handle is opened once per process under a lock: two threads opening at once
        # would drop (and close) one handle while the other thread reads from it.
        with self._lock:
            if self._file is None or self._pid != os.getpid():
                self._file, self._pid = open(self.path, "rb"), os.getpid()
            f = self._file
        start, end = int(self._starts[index]), int(self._ends[index])
        return os.pread(f.fileno(), end - start, start)

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside [0, {len(self)})")
        rec = _decode_record(self._read(index), f"{self.path}:{index + 1}", self.tokenizer,
                             self.vocab_size, self.skip_bad, self.max_tokens, self.reserved)
        self.num_bad += "bad" in rec
        return rec


class ArrayRecordSource:
    """ArrayRecord files whose records are JSON objects (bytes) as in JSONL.

    Bad records are named `file:record` (0-based record index within that file).
    """

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], tokenizer: Any = None,
                 vocab_size: int | None = None, skip_bad: bool = False, max_tokens: int | None = None,
                 reserved: Mapping[int, str] | None = None):
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        self.paths = [str(p) for p in paths]
        for p in self.paths:
            if not Path(p).is_file():
                raise DataError(f"{p}: no such file")
        self.tokenizer, self.vocab_size, self.skip_bad = tokenizer, vocab_size, bool(skip_bad)
        self.max_tokens, self.reserved = max_tokens, dict(reserved or {})
        self._sources = [grain.sources.ArrayRecordDataSource([p]) for p in self.paths]
        self._offsets = np.cumsum([0] + [len(s) for s in self._sources]).astype(np.int64)
        self.num_bad = 0

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return (f"ArrayRecordSource(paths={self.paths!r}, records={len(self)}, skip_bad={self.skip_bad}, "
                f"vocab_size={self.vocab_size})")

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside [0, {len(self)})")
        f = int(np.searchsorted(self._offsets, index, side="right")) - 1
        local = index - int(self._offsets[f])
        rec = _decode_record(self._sources[f][local], f"{self.paths[f]}:{local}", self.tokenizer,
                             self.vocab_size, self.skip_bad, self.max_tokens, self.reserved)
        self.num_bad += "bad" in rec
        return rec


class ConcatSource:
    """Several sources read as one: the records of the first, then of the second, ..."""

    def __init__(self, sources: Sequence[Any]):
        self.sources = list(sources)
        self._offsets = np.cumsum([0] + [len(s) for s in self.sources]).astype(np.int64)

    @property
    def num_bad(self) -> int:
        return sum(s.num_bad for s in self.sources)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __repr__(self) -> str:
        return f"ConcatSource({self.sources!r})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside [0, {len(self)})")
        f = int(np.searchsorted(self._offsets, index, side="right")) - 1
        return self.sources[f][index - int(self._offsets[f])]


def _get(cfg: Any, key: str, default: Any) -> Any:
    if cfg is None:
        return default
    if isinstance(cfg, Mapping):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


def make_source(cfg: Any = None, tokenizer: Any = None, **overrides):
    """Build a source from a data config (a mapping or an object with these attributes) and/or
    keyword overrides: source ("passkey" | "jsonl" | "arrayrecord"), path (files and globs,
    comma-separated, read in that order: comet_jax/data/files.py; for arrayrecord also a list),
    mixture (a list of {path, weight}: comet_jax/data/mixture.py; ignored when `path` is a keyword
    override), seq_len, skip_bad (False),
    passkey_min_len (None: the shortest possible prompt), passkey_digits (5), passkey_loss
    ("answer" or "all"), passkey_needles (1), passkey_questions (1), passkey_end (""),
    passkey_filler ("cycle"), passkey_repeats ("spread"), passkey_named (0), passkey_shift (0), passkey_shift_at ("task"),
    passkey_shift_share (1.0), passkey_wording ("fixed"), passkey_near (0.0), seed (0),
    vocab_size (None: no range check), reserved ({id: name} of ids refused in data). The passkey
    source uses the byte tokenizer when `tokenizer` is None; its examples are at most seq_len
    tokens long; file sources read at most seq_len tokens of a document."""
    def get(key, default=None):
        if key in overrides:
            return overrides[key]
        # a training config keeps passkey_X as X of its data.passkey section
        nested = _get(cfg, "passkey", None)
        if key.startswith("passkey_") and nested is not None:
            return _get(nested, key[len("passkey_"):], default)
        return _get(cfg, key, default)

    kind = get("source")
    if kind is None:
        raise ValueError(f"make_source: no source given; expected one of {SOURCES}")
    skip_bad, vocab_size = bool(get("skip_bad", False)), get("vocab_size")
    if kind == "passkey":
        if tokenizer is None:
            from comet_jax.data.byte_tokenizer import byte_tokenizer
            tokenizer = byte_tokenizer()
        seq_len = get("seq_len")
        if seq_len is None:
            raise ValueError("make_source: the passkey source needs seq_len")
        return PasskeySource(tokenizer, max_len=int(seq_len), min_len=get("passkey_min_len"),
                             digits=int(get("passkey_digits", 5)), seed=int(get("seed", 0)),
                             loss_on=get("passkey_loss", "answer"), needles=int(get("passkey_needles", 1)),
                             questions=int(get("passkey_questions", 1)),
                             end=get("passkey_end", ""), filler=get("passkey_filler", "cycle"),
                             repeats=get("passkey_repeats", "spread"),
                             named=int(get("passkey_named", 0)), shift=int(get("passkey_shift", 0)),
                             shift_at=get("passkey_shift_at", "task"),
                             shift_share=float(get("passkey_shift_share", 1.0)),
                             wording=get("passkey_wording", "fixed"),
                             near=float(get("passkey_near", 0.0)))
    limits = {"max_tokens": get("seq_len"), "reserved": get("reserved")}
    mixture = None if "path" in overrides else get("mixture")  # an explicit path (eval.path) wins
    if mixture:
        items = [(_get(m, "path", None), float(_get(m, "weight", 1.0))) for m in mixture]
        return MixtureSource([make_source(cfg, tokenizer, **{**overrides, "path": p}) for p, _ in items],
                             [w for _, w in items])
    path = get("path")
    if not path:
        raise ValueError(f"make_source: source {kind!r} needs a path (or a mixture)")
    if kind in ("jsonl", "arrayrecord") and isinstance(path, (str, os.PathLike)):
        try:
            path = data_files(str(path))
        except FileNotFoundError as e:
            raise DataError(str(e)) from None
    if kind == "jsonl":
        sources = [JsonlSource(p, tokenizer, vocab_size, skip_bad, **limits) for p in path]
        return sources[0] if len(sources) == 1 else ConcatSource(sources)
    if kind == "arrayrecord":
        return ArrayRecordSource(path, tokenizer, vocab_size, skip_bad, **limits)
    raise ValueError(f"make_source: unknown source {kind!r}; expected one of {SOURCES}")

