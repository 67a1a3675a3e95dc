"""data.passkey.wording=varied/composed/scrambled: training questions in several wordings, none the held-out one."""

import re

import numpy as np
import pytest

from comet_jax.config import ConfigError
from comet_jax.data.passkey import (FILLER_SENTENCES, QUESTION, QUESTION_HELD_OUT, QUESTION_STEMS, QUESTIONS_VARIED,
                                    TASK, PasskeySource, composed_questions, encode, scrambled_questions,
                                    sentences)
from comet_jax.data.passkey_tokenizer import passkey_tokenizer


@pytest.fixture(scope="module")
def tok():
    return passkey_tokenizer()


@pytest.mark.parametrize("wordings", ["varied", "composed", "scrambled"])
def test_every_wording_is_words_of_the_tokenizer_and_none_is_held_out(tok, wordings):
    questions = {"varied": QUESTIONS_VARIED, "composed": composed_questions(),
                 "scrambled": scrambled_questions()}[wordings]
    # composed: 8 leads (5 filler + 3 task sentences), none / one / two distinct, times 5 stems (or none);
    # scrambled: those and as many with leads of random words
    assert questions[0] == QUESTION and len(set(questions)) == len(questions) == {"varied": 5, "composed": 325,
                                                                                 "scrambled": 650}[wordings]
    for q in questions:
        ids = encode(tok, " " + q)
        # words are ids past the 256 byte symbols; only "." and "?" are single bytes
        assert all(i >= 256 or chr(i) in ".?" for i in ids), f"{q!r} falls back to bytes: the tokenizer needs new words"
        assert q.endswith("The pass key is")
        # the held-out question's own phrases (composed leads may be the task line's "I will quiz you about the
        # important information there.")
        assert "quiz you about the pass key" not in q and "What is it?" not in q and q != QUESTION_HELD_OUT
        assert "quiz" not in q or wordings != "varied"
    if wordings == "scrambled":
        assert questions[:325] == composed_questions() and scrambled_questions() == questions  # deterministic
        leads = [q.removesuffix("The pass key is") for q in questions[325:]]
        # the random leads are not sentences the model has read, and they differ in length (1-12 words)
        assert not any(lead.strip().rstrip(".?") in FILLER_SENTENCES + sentences(TASK) for lead in leads[:50])
        assert {len(lead.split()) for lead in leads} >= set(range(2, 13))


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


def test_scrambled_records_ask_in_random_contexts_and_label_only_the_answers(tok):
    src = PasskeySource(tok, min_len=512, max_len=512, seed=3, questions=4, end=".", wording="scrambled")
    assert "wording='scrambled'" in repr(src)
    questions = sorted(scrambled_questions(), key=len, reverse=True)
    seen = []
    for i in range(30):
        rec, eps = src[i], src.episodes(i)
        key = eps[0][2]["key"]
        assert tok.decode(rec["input_ids"][rec["loss_mask"]].tolist()) == f" {key}." * len(eps)
        for prompt, _, _ in eps:
            text = tok.decode(prompt.tolist())
            seen.append(next(q for q in questions if text.endswith(" " + q)))
    # about half the questions have a random lead (not one of the 325 composed)
    assert 0.3 < sum(q not in composed_questions() for q in seen) / len(seen) < 0.7


def test_composed_records_ask_in_many_contexts_and_label_only_the_answers(tok):
    composed = PasskeySource(tok, min_len=512, max_len=512, seed=2, questions=4, end=".", wording="composed")
    leads, stems = set(FILLER_SENTENCES + sentences(TASK)), set(QUESTION_STEMS)
    questions = set(composed_questions())
    seen = []
    for i in range(40):
        rec = composed[i]
        ids, mask = rec["input_ids"], rec["loss_mask"]
        eps = composed.episodes(i)
        key = eps[0][2]["key"]
        assert tok.decode(ids[mask].tolist()) == f" {key}." * len(eps) and 512 - 40 * len(eps) <= len(ids) <= 512
        for prompt, _, _ in eps:
            # each question is one of the composed wordings: the end of its prompt
            text = tok.decode(prompt.tolist())
            q = next(q for q in sorted(questions, key=len, reverse=True) if text.endswith(" " + q))
            seen.append(q)
    used = {s for q in seen for s in leads | stems if s in q}
    assert len(set(seen)) > 0.8 * len(seen) and used == leads | stems  # drawn among all 325, every part used


def test_a_curriculum_stage_may_ask_in_its_own_wording(tok):
    from comet_jax.train.train_config import load_config
    from comet_jax.train.train_config_checks import validate, validate_data
    from comet_jax.train.trainer import curriculum_stage

    stages = "data.curriculum=[{until_step: 10, seq_len: 128, passkey: {wording: varied}}, {until_step: 20, seq_len: %d}]"
    cfg = load_config(None, ["data.tokenizer=passkey", "data.passkey.wording=composed", stages % 256])
    validate(cfg)
    validate_data(cfg)
    assert [curriculum_stage(cfg, s).wording for s in (0, 10, 20)] == ["varied", "composed", "composed"]
    # the shortest prompt is that of the stage's wording: 90 tokens fit a varied stage, not a composed one
    short = load_config(None, ["data.tokenizer=passkey", "data.passkey.wording=composed", stages.replace("128", "90") % 90])
    with pytest.raises(ConfigError, match=r"data\.curriculum\[1\]\.seq_len \(90\) .*wording composed.*>= 93"):
        validate_data(short)
    with pytest.raises(ConfigError, match=r"data\.curriculum\[0\]\.passkey\.wording must be one of"):
        validate(load_config(None, [stages.replace("varied", "mixed") % 256]))


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
