"""The tokenizer saved beside a checkpoint (the `tokenizers` library, no transformers)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_tokenizer(checkpoint_dir: str | Path, meta: dict[str, Any] | None = None):
    """The checkpoint's `tokenizers.Tokenizer`, or None when it has none."""
    name = (meta or {}).get("tokenizer", "tokenizer.json") or "tokenizer.json"
    path = Path(checkpoint_dir) / name
    if not path.is_file():
        return None
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))
