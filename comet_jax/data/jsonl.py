"""JSONL token sequences: one `{"input_ids": [...]}` or `{"text": "..."}` object a line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np


class DataError(ValueError):
    """A bad record; the message names the file and line."""


def parse_record(obj: Any, where: str, tokenizer: Any = None, vocab_size: int | None = None,
                 min_tokens: int = 2) -> np.ndarray:
    """Token ids of one decoded JSON record; raises DataError naming `where` (file:line).

    Fewer than `min_tokens` ids is an error (a sequence needs 2 tokens to have a label);
    the training pipeline passes 0 and drops short documents itself, counting them."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "input_ids" in obj:
        ids = obj["input_ids"]
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DataError(f"{where}: input_ids must be a list of integers")
    elif "text" in obj:
        if not isinstance(obj["text"], str):
            raise DataError(f"{where}: text must be a string")
        if tokenizer is None:
            raise DataError(f"{where}: has 'text' but no tokenizer is available (the checkpoint has no "
                            "tokenizer.json); give 'input_ids' instead")
        ids = tokenizer.encode(obj["text"]).ids
    else:
        raise DataError(f"{where}: needs an 'input_ids' or a 'text' key, found {sorted(obj)}")
    if len(ids) < min_tokens:
        raise DataError(f"{where}: {len(ids)} token(s); a sequence needs at least 2 to have a label")
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or (vocab_size is not None and arr.max() >= vocab_size)):
        bad = int(arr[(arr < 0) | (arr >= (vocab_size or np.iinfo(np.int64).max))][0])
        raise DataError(f"{where}: token id {bad} is outside the vocabulary [0, {vocab_size})")
    return arr.astype(np.int32)


def parse_line(text: str, where: str, tokenizer: Any = None, vocab_size: int | None = None,
               min_tokens: int = 2) -> np.ndarray:
    """Token ids of one JSONL line (or ArrayRecord record); DataError names `where`."""
    if not text.strip():
        raise DataError(f"{where}: empty line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from None
    return parse_record(obj, where, tokenizer, vocab_size, min_tokens)


def iter_jsonl(path: str | Path, tokenizer: Any = None, vocab_size: int | None = None) -> Iterator[np.ndarray]:
    """Yield the token ids of every line, in file order."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    with path.open("r", encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            yield parse_line(line, f"{path}:{lineno}", tokenizer, vocab_size)


def read_jsonl(path: str | Path, tokenizer: Any = None, vocab_size: int | None = None) -> list[np.ndarray]:
    return list(iter_jsonl(path, tokenizer, vocab_size))
