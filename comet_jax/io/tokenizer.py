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


BUILT_IN = ("byte", "passkey")


def tokenizer_by_name(name: str):
    """A built-in tokenizer ("byte": raw UTF-8 bytes; "passkey": the small BPE of the synthetic
    passkey task) or a tokenizer.json file. Raises ValueError naming the choices."""
    if name == "byte":
        from comet_jax.data.byte_tokenizer import byte_tokenizer

        return byte_tokenizer()
    if name == "passkey":
        from comet_jax.data.passkey_tokenizer import passkey_tokenizer

        return passkey_tokenizer()
    path = Path(name)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise ValueError(f"tokenizer {name!r}: not one of {BUILT_IN} and no such tokenizer.json")
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))
