"""The files a data path names: a comma-separated list whose items are files or globs
(`data/books-*.jsonl,data/code.jsonl`). Only the standard library, so config checks can call it
before anything heavy is imported."""

from __future__ import annotations

import glob
import os


def data_files(path: str) -> list[str]:
    """The files, in the order given (a glob's matches sorted); FileNotFoundError naming the
    first item that is neither a file nor a glob matching one."""
    out: list[str] = []
    for item in (s.strip() for s in str(path).split(",")):
        if not item:
            continue
        if glob.has_magic(item):
            hits = sorted(p for p in glob.glob(item) if os.path.isfile(p))
            if not hits:
                raise FileNotFoundError(f"{item}: no file matches")
            out += hits
        elif os.path.isfile(item):
            out.append(item)
        else:
            raise FileNotFoundError(f"{item} does not exist or is not a file")
    if not out:
        raise FileNotFoundError("no file given")
    return out


def held_out_source(data_source: str, path: str) -> str:
    """The format of held-out files (eval.path): the training data's, or, when training reads
    the synthetic passkey task, ArrayRecord for files named *.array_record* / *.arrayrecord,
    else JSONL."""
    if data_source != "passkey":
        return data_source
    names = [item.strip().lower() for item in str(path).split(",") if item.strip()]
    return "arrayrecord" if names and all("array_record" in n or "arrayrecord" in n for n in names) else "jsonl"
