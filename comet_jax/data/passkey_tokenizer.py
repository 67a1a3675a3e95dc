"""A small word-level tokenizer for the synthetic passkey task (`data.tokenizer=passkey`).

Why: with the byte tokenizer a passkey prompt (task line, needle, question: see
`passkey.py`) takes about 250 tokens before any filler, so even the shortest prompt spans
several 64-token CoMeT chunks and a filler cycle costs ~90 tokens. Tiny from-scratch models
learn the task much sooner when every word of the passkey texts is one token: the minimum
prompt fits in one chunk and the filler repeats in short cycles.

The tokenizer is built in-process and deterministically (no files, no downloads, no
training run whose tie-breaking could differ between processes):

- pre-tokenization: `Digits(individual_digits=True)` then GPT-2 `ByteLevel` (regex on), so
  " 12345" is [" ", "1", "2", "3", "4", "5"] for every key, and a text is split at the same
  places whether it is encoded whole or in units that each start with a space (the property
  `passkey.py` relies on);
- model: BPE with `ignore_merges=True` and no merges: a pre-token that is in the vocabulary
  (" grass", " pass", ".", ...) is one token; anything else falls back to its bytes;
- vocabulary: ids 0..255 are the 256 byte symbols (id == byte value, as in the byte
  tokenizer, so ANY text encodes), then the words of TASK, FILLER, the needle and QUESTION
  in order of first appearance (a few hundred ids in all);
- decoder: ByteLevel, so `decode(encode(text).ids) == text`.

No special tokens, no BOS. The trainer saves it beside the exported model as tokenizer.json.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from comet_jax.data.byte_tokenizer import bytes_to_unicode
from comet_jax.data.passkey import FILLER, FILLER_SENTENCES, QUESTION, TASK, needle


def _pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def passkey_texts() -> list[str]:
    """The texts whose words become single tokens (as `passkey.py` tokenizes them)."""
    return [TASK, TASK.rstrip(" "), FILLER, *(" " + s for s in FILLER_SENTENCES), " " + needle("0123456789"),
            " " + QUESTION, QUESTION]


def passkey_tokenizer() -> Tokenizer:
    """A byte-level `tokenizers.Tokenizer` with one token per word of the passkey texts."""
    table = bytes_to_unicode()
    if set(table.values()) != set(pre_tokenizers.ByteLevel.alphabet()):  # pragma: no cover
        raise RuntimeError("tokenizers' ByteLevel alphabet differs from the GPT-2 byte table")
    vocab = {ch: b for b, ch in table.items()}
    pre = _pre_tokenizer()
    for text in passkey_texts():
        for piece, _ in pre.pre_tokenize_str(text):
            if piece not in vocab:
                vocab[piece] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], ignore_merges=True))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return tok
