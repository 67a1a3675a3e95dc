"""data.passkey.wording=varied: training questions in several wordings, none the held-out one."""

import re

import numpy as np
import pytest

from comet_jax.config import ConfigError
from comet_jax.data.passkey import QUESTION, QUESTION_HELD_OUT, QUESTIONS_VARIED, PasskeySource, encode
from comet_jax.data.passkey_tokenizer import passkey_tokenizer


@pytest.fixture(scope="module")
def tok():
    return passkey_tokenizer()


def test_every_wording_is_words_of_the_tokenizer_and_none_is_held_out(tok):
    assert QUESTIONS_VARIED[0] == QUESTION and len(set(QUESTIONS_VARIED)) == len(QUESTIONS_VARIED) == 5
    for q in QUESTIONS_VARIED:
        ids = encode(tok, " " + q)
        # words are ids past the 256 byte symbols; only "." and "?" are single bytes
        assert all(i >= 256 or chr(i) in ".?" for i in ids), f"{q!r} falls back to bytes: the tokenizer needs new words"
        assert q.endswith("The pass key is")
        assert "quiz" not in q and "What is it?" not in q and q != QUESTION_HELD_OUT


def test_varied_records_ask_in_every_wording_and_keep_their_length(tok):
    kw = dict(min_len=512, max_len=512, seed=1, questions=4, end=".", shift=15, shift_share=0.5)
    fixed, varied = PasskeySource(tok, **kw), PasskeySource(tok, wording="varied", **kw)
    assert "wording='varied'" in repr(varied) and "wording" not in repr(fixed)
    pattern = "(" + "|".join(re.escape(q) for q in QUESTIONS_VARIED) + r") (\d{5})\."
    seen = set()
    for i in range(60):
        rec = varied[i]
        ids, mask = rec["input_ids"], rec["loss_mask"]
        text = tok.decode(ids.tolist())
        asked = re.findall(pattern, text)
        assert asked and len(asked) == len(varied.episodes(i))
        assert 512 - 5 * len(asked) <= len(ids) <= 512  # whole filler sentences: each episode < 1 short
        key = re.search(r"The pass key is (\d{5})\. Remember it", text).group(1)
        assert {k for _, k in asked} == {key}
        seen |= {q for q, _ in asked}
        # the labels are exactly the answers: " " + key + "." after each question
        labelled = tok.decode(ids[mask].tolist())
        assert labelled == f" {key}." * len(asked)
        # the fixed wording's record of the same index asks only QUESTION
        assert set(re.findall(pattern, tok.decode(fixed[i]["input_ids"].tolist()))) <= {(QUESTION, key)}
    assert seen == set(QUESTIONS_VARIED)


def test_the_setting_is_checked(tok):
    from comet_jax.train.train_config import load_config
    from comet_jax.train.train_config_checks import validate

    with pytest.raises(ValueError, match="wording must be one of"):
        PasskeySource(tok, max_len=400, wording="mixed")
    with pytest.raises(ConfigError, match="data.passkey.wording"):
        validate(load_config("configs/demo_passkey.yaml", ["data.passkey.wording=mixed"]))
    cfg = load_config("configs/demo_passkey.yaml", ["data.passkey.wording=varied"])
    validate(cfg)
    assert cfg.data.passkey.wording == "varied"
