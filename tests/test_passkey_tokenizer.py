"""The passkey tokenizer: one token per word of the passkey texts, single-digit tokens,
byte fallback, and the unit-concatenation property `passkey.py` relies on."""

import numpy as np
import pytest
from tokenizers import Tokenizer

from comet_jax.data.passkey import (FILLER_SENTENCES, QUESTION, TASK, PasskeySource, _Parts, build_prompt,
                                    needle, random_key)
from comet_jax.data.passkey_tokenizer import passkey_tokenizer
from test_passkey import expected_text


@pytest.fixture(scope="module")
def tok():
    return passkey_tokenizer()


def test_small_vocab_with_all_bytes(tok):
    vocab = tok.get_vocab()
    assert 256 < tok.get_vocab_size() < 400
    assert sorted(vocab.values()) == list(range(len(vocab)))
    # any text encodes (bytes as fallback) and decodes back
    for text in ["Hello wörld, 日本語 ✓\n\t  x", " The grass is greener.", "", "passkey: 0042!"]:
        assert tok.decode(tok.encode(text).ids) == text
    # id == byte value for the first 256 ids, as in the byte tokenizer
    assert tok.encode("A").ids == [65]


def test_deterministic(tok):
    other = passkey_tokenizer()
    assert other.get_vocab() == tok.get_vocab()
    assert other.to_str() == tok.to_str()


def test_each_word_is_one_token(tok):
    for text in [TASK.rstrip(" "), " " + QUESTION, " " + needle("12345").rstrip(" "),
                 *(" " + s for s in FILLER_SENTENCES)]:
        words = text.replace(".", " .").replace("?", " ?").split()
        digits = sum(len(w) for w in words if w.isdigit())
        enc = tok.encode(text)
        assert all(t in tok.get_vocab() for t in enc.tokens)
        # words and punctuation one token each; a key is a lone space plus one token per digit
        n_keys = sum(w.isdigit() for w in words)
        assert len(enc.ids) == len(words) - n_keys + n_keys + digits, (text, enc.tokens)
    assert tok.encode(" grass").tokens == ["Ġgrass"]


def test_digits_are_single_tokens(tok):
    digit_ids = [tok.token_to_id(str(d)) for d in range(10)]
    assert None not in digit_ids and len(set(digit_ids)) == 10
    for text in ["0123456789", " 9876543210", "x99y", "key 12345."]:
        for token in tok.encode(text).tokens:
            assert not any(c.isdigit() for c in token) or len(token) == 1, (text, tok.encode(text).tokens)
    parts = _Parts(tok)
    rng = np.random.default_rng(0)
    keys = ["00000", "99999", "12345", "10000"] + [random_key(rng, 5) for _ in range(50)]
    lengths = {len(parts.answer(k)) for k in keys}
    assert lengths == {6}  # " " + five digits
    assert len({len(parts.needle(k)) for k in keys}) == 1
    assert tok.encode(" 12345").ids == [tok.token_to_id("Ġ")] + [digit_ids[d] for d in (1, 2, 3, 4, 5)]


@pytest.mark.parametrize("depth", [0.0, 0.5, 1.0])
def test_units_concatenate_to_the_whole_text(tok, depth):
    ids, answer, info = build_prompt(tok, 2000, depth, "12345")
    text = tok.decode(ids.tolist())
    assert text == expected_text("12345", info["sentences_before"], info["num_sentences"])
    assert tok.encode(text).ids == ids.tolist()
    # prompt + answer too (the training record)
    assert tok.encode(text + " 12345").ids == ids.tolist() + answer.tolist()
    assert 2000 - 6 < len(ids) <= 2000


def test_minimum_prompt_fits_a_chunk(tok):
    _, _, info = build_prompt(tok, 2000, 0.5, "12345")
    assert info["minimum"] < 80
    parts = _Parts(tok)
    assert len(parts.cycle) < 30  # tokens per filler cycle (5 sentences)
    src = PasskeySource(tok, max_len=128, seed=1)
    assert src.shortest < 80
    rec = src[3]
    assert len(rec["input_ids"]) <= 128 and rec["loss_mask"].sum() == 6


def test_save_and_reload(tok, tmp_path):
    tok.save(str(tmp_path / "tokenizer.json"))
    again = Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    ids, _, _ = build_prompt(tok, 300, 0.3, "31415")
    text = tok.decode(ids.tolist())
    assert again.encode(text).ids == ids.tolist() and again.decode(ids.tolist()) == text
