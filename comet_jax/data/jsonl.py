"""JSONL token sequences: one `{"input_ids": [...]}` or `{"text": "..."}` object a line.

A record with `input_ids` may say which tokens are scored: `labels` (same length; -100 = not
scored, otherwise the token itself: the official CoMeT / Hugging Face convention, where the
model shifts them) or `loss_mask` (same length, 0/1). `parse_record(..., with_mask=True)`
returns the mask beside the ids (None when the record has neither: every token is scored).

One parser for every reader (comet-loss, the training pipeline): `parse_bytes` takes a raw
line or record, `parse_line` a decoded one, `parse_record` a decoded JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

# A text record with max_tokens set tokenises a prefix of 4 * (max_tokens + margin) characters
# first: a byte-level tokenizer gives at least one token per character (up to 4: UTF-8), and
# BPE tokens average about 4 characters on prose, so one pass is usually enough; denser text
# doubles the prefix (at most ~4x the characters really needed, in all).
PREFIX_CHARS_PER_TOKEN = 4
# Tokens kept beyond max_tokens before a prefix is trusted: the tokens next to the cut (a word
# or whitespace run cut short, an end-of-text token the tokenizer appends) may differ from the
# whole text's; everything before them does not.
PREFIX_MARGIN_TOKENS = 16


class DataError(ValueError):
    """A bad record; the message names the file and line."""


def comet_token_names(comet: Any) -> dict[int, str]:
    """The CoMeT special token ids of a CometConfig (-1 = absent), each with its name: rows the
    model fills in itself (memory placeholders, beacons), never valid in data."""
    names = {comet.placeholder_id: "placeholder", comet.temp_beacon_id: "temp beacon"}
    names.update({i: "global beacon" for i in comet.global_beacon_ids})
    return {i: n for i, n in names.items() if i >= 0}


def _encode(tokenizer: Any, text: str, where: str) -> list[int]:
    try:
        return tokenizer.encode(text).ids
    except TypeError:
        # the Rust tokenizers refuse a str holding an unpaired surrogate ("\ud800" in the JSON)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise DataError(f"{where}: text is not valid Unicode (an unpaired surrogate escape)") from None
        raise


def tokenize_prefix(tokenizer: Any, text: str, max_tokens: int, where: str = "<text>") -> list[int]:
    """encode(text).ids[:max_tokens] for ordinary text, tokenising only a prefix of it (a
    multi-megabyte document would otherwise be tokenised whole, then cut)."""
    n = PREFIX_CHARS_PER_TOKEN * (max_tokens + PREFIX_MARGIN_TOKENS)
    while True:
        if n >= len(text):
            return _encode(tokenizer, text, where)[:max_tokens]
        # cut before a space or newline in the prefix's second half, so that (for the usual
        # pre-tokenizers) the last word is whole and only whitespace tokens sit at the cut
        cut = max(text.rfind(" ", n // 2, n), text.rfind("\n", n // 2, n))
        ids = _encode(tokenizer, text[: cut if cut > 0 else n], where)
        if len(ids) >= max_tokens + PREFIX_MARGIN_TOKENS:
            return ids[:max_tokens]
        n *= 2


NOT_SCORED = -100  # the label of a token that is not scored (Hugging Face, the official code)


def record_mask(obj: dict, ids: list, where: str) -> np.ndarray | None:
    """The scored tokens of a record with `input_ids` ([n] bool, True = scored) from its `labels`
    or `loss_mask`, or None when it has neither; DataError naming `where` for a bad one."""
    keys = [k for k in ("labels", "loss_mask") if k in obj]
    if not keys:
        return None
    if len(keys) == 2:
        raise DataError(f"{where}: give 'labels' or 'loss_mask', not both")
    key, values = keys[0], obj[keys[0]]
    if "input_ids" not in obj:
        raise DataError(f"{where}: '{key}' needs 'input_ids' (the tokens of a 'text' record are not known "
                        "in advance)")
    if not isinstance(values, list) or not all(isinstance(v, int) for v in values):
        raise DataError(f"{where}: {key} must be a list of integers")
    if len(values) != len(obj["input_ids"]):
        raise DataError(f"{where}: {key} has {len(values)} entries, input_ids {len(obj['input_ids'])}")
    values = np.asarray(values[:len(ids)], np.int64)
    if key == "loss_mask":
        if values.size and not np.isin(values, (0, 1)).all():
            raise DataError(f"{where}: loss_mask must hold 0 or 1, found {int(values[~np.isin(values, (0, 1))][0])}")
        return values.astype(bool)
    scored = values != NOT_SCORED
    differ = scored & (values != np.asarray(ids, np.int64))
    if differ.any():
        k = int(np.flatnonzero(differ)[0])
        raise DataError(f"{where}: labels[{k}] = {int(values[k])} is neither {NOT_SCORED} (not scored) nor the "
                        f"token input_ids[{k}] = {ids[k]}")
    return scored


def parse_record(obj: Any, where: str, tokenizer: Any = None, vocab_size: int | None = None,
                 min_tokens: int = 2, *, max_tokens: int | None = None,
                 reserved: Mapping[int, str] | None = None, with_mask: bool = False):
    """Token ids of one decoded JSON record; raises DataError naming `where` (file:line).

    Fewer than `min_tokens` ids is an error (a sequence needs 2 tokens to have a label);
    the training pipeline passes 0 and drops short documents itself, counting them.
    max_tokens: return at most this many ids (the first ones); a text record then has only a
    prefix tokenised, input_ids are cut before they are checked.
    reserved: ids that must not occur in data, with their names (`comet_token_names`).
    with_mask: return (ids, scored tokens or None), see `record_mask`."""
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    mask = None
    if "input_ids" in obj:
        ids = obj["input_ids"]
        if not isinstance(ids, list):
            raise DataError(f"{where}: input_ids must be a list of integers")
        ids = ids[:max_tokens]
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise DataError(f"{where}: input_ids must be a list of integers")
        mask = record_mask(obj, ids, where) if with_mask else None
    elif "text" in obj:
        if with_mask:
            record_mask(obj, [], where)  # refuses labels / loss_mask without input_ids
        if not isinstance(obj["text"], str):
            raise DataError(f"{where}: text must be a string")
        if tokenizer is None:
            raise DataError(f"{where}: has 'text' but no tokenizer is available (the checkpoint has no "
                            "tokenizer.json); give 'input_ids' instead")
        if max_tokens is None:
            ids = _encode(tokenizer, obj["text"], where)
        else:
            ids = tokenize_prefix(tokenizer, obj["text"], max_tokens, where)
    else:
        raise DataError(f"{where}: needs an 'input_ids' or a 'text' key, found {sorted(obj)}")
    if len(ids) < min_tokens:
        what = "a sequence needs at least 2 to have a label" if min_tokens == 2 else f"at least {min_tokens} needed"
        raise DataError(f"{where}: {len(ids)} token(s); {what}")
    arr = np.asarray(ids, dtype=np.int64)
    if arr.size and (arr.min() < 0 or (vocab_size is not None and arr.max() >= vocab_size)):
        bad = int(arr[(arr < 0) | (arr >= (vocab_size or np.iinfo(np.int64).max))][0])
        raise DataError(f"{where}: token id {bad} is outside the vocabulary [0, {vocab_size})")
    if reserved and arr.size:
        hit = np.isin(arr, np.fromiter(reserved, np.int64))
        if hit.any():
            bad = int(arr[hit][0])
            raise DataError(f"{where}: token id {bad} is the CoMeT {reserved[bad]} token, which the model "
                            "inserts itself; it cannot occur in data")
    return (arr.astype(np.int32), mask) if with_mask else arr.astype(np.int32)


def parse_line(text: str, where: str, tokenizer: Any = None, vocab_size: int | None = None,
               min_tokens: int = 2, *, max_tokens: int | None = None,
               reserved: Mapping[int, str] | None = None, with_mask: bool = False):
    """Token ids of one JSONL line (or ArrayRecord record); DataError names `where`."""
    if not text.strip():
        raise DataError(f"{where}: empty line")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: invalid JSON ({e.msg})") from None
    return parse_record(obj, where, tokenizer, vocab_size, min_tokens, max_tokens=max_tokens, reserved=reserved,
                        with_mask=with_mask)


def parse_bytes(raw: bytes, where: str, tokenizer: Any = None, vocab_size: int | None = None,
                min_tokens: int = 2, *, max_tokens: int | None = None,
                reserved: Mapping[int, str] | None = None, with_mask: bool = False):
    """parse_line of an undecoded line or record: bytes that are not UTF-8 are a DataError."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{where}: not valid UTF-8") from None
    return parse_line(text, where, tokenizer, vocab_size, min_tokens, max_tokens=max_tokens, reserved=reserved,
                      with_mask=with_mask)


def iter_jsonl(path: str | Path, tokenizer: Any = None, vocab_size: int | None = None, *,
               reserved: Mapping[int, str] | None = None, min_tokens: int = 2) -> Iterator[np.ndarray]:
    """Yield the token ids of every line, in file order (prompts need 1 token, sequences to score 2)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    # binary, so that a line that is not UTF-8 is a DataError naming it, like any bad line
    with path.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            yield parse_bytes(line, f"{path}:{lineno}", tokenizer, vocab_size, min_tokens, reserved=reserved)


def read_jsonl(path: str | Path, tokenizer: Any = None, vocab_size: int | None = None, *,
               reserved: Mapping[int, str] | None = None, min_tokens: int = 2) -> list[np.ndarray]:
    return list(iter_jsonl(path, tokenizer, vocab_size, reserved=reserved, min_tokens=min_tokens))
