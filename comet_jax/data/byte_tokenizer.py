"""A byte-level tokenizer: ids 0..255 are the raw UTF-8 bytes, nothing else.

Built in-process with the `tokenizers` library (no files, no downloads), so it has the same
interface as a tokenizer loaded from a checkpoint (`encode(text).ids`, `decode(ids)`). Used
by the synthetic tasks and small from-scratch models. No special tokens, no BOS.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

BYTE_VOCAB = 256


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode character table (the ByteLevel alphabet)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, n = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + n)
            n += 1
    return chars


def byte_tokenizer() -> Tokenizer:
    """A `tokenizers.Tokenizer` whose ids are the bytes of the UTF-8 text (id == byte value)."""
    table = bytes_to_unicode()
    if set(table.values()) != set(pre_tokenizers.ByteLevel.alphabet()):  # pragma: no cover
        raise RuntimeError("tokenizers' ByteLevel alphabet differs from the GPT-2 byte table")
    vocab = {ch: b for b, ch in table.items()}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return tok
