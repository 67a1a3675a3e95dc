"""The synthetic passkey task: prompt builder and PasskeySource."""

import re

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

from comet_jax.data.byte_tokenizer import byte_tokenizer
from comet_jax.data.passkey import (FILLER, FILLER_SENTENCES, QUESTION, TASK, PasskeySource, build_prompt,
                                    needle)


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def expected_text(key, before, total):
    """The prompt text from the spec's strings: TASK, filler, needle, filler, QUESTION."""
    sents = [FILLER_SENTENCES[i % len(FILLER_SENTENCES)] + " " for i in range(total)]
    return TASK + "".join(sents[:before]) + needle(key) + "".join(sents[before:]) + QUESTION


def test_filler_sentences():
    assert " ".join(FILLER_SENTENCES) + " " == FILLER
    assert len(FILLER_SENTENCES) == 5


@pytest.mark.parametrize("n_tokens", [300, 517, 1000, 4096, 100_000])
def test_prompt_length_close_to_n_tokens(tok, n_tokens):
    ids, answer, info = build_prompt(tok, n_tokens, 0.5, "12345")
    longest = max(len(s) + 1 for s in FILLER_SENTENCES)  # byte tokenizer: one id per byte
    assert ids.dtype == np.int32 and answer.dtype == np.int32
    assert n_tokens - longest < len(ids) <= n_tokens
    assert tok.decode(answer.tolist()) == " 12345"
    assert tok.decode(ids.tolist()) == expected_text("12345", info["sentences_before"], info["num_sentences"])


@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.75, 1.0])
def test_key_at_requested_depth(tok, depth):
    key = "90210"
    ids, _, info = build_prompt(tok, 3000, depth, key)
    text = tok.decode(ids.tolist())
    head = tok.decode(ids[: info["needle_offset"]].tolist())
    assert text[len(head):].startswith(" " + needle(key).rstrip())
    # Count the filler sentences in the text before the needle, independently of info.
    before = sum(head.count(s) for s in FILLER_SENTENCES)
    total = sum(text.count(s) for s in FILLER_SENTENCES)
    assert total == info["num_sentences"] > 50
    assert abs(before - depth * total) <= 1
    assert before == info["sentences_before"]
    if depth == 0.0:
        assert head == TASK.rstrip()
    if depth == 1.0:
        rest = tok.decode(ids[info["needle_offset"] + info["needle_len"]:].tolist())
        assert rest == " " + QUESTION


def test_too_short_names_the_minimum(tok):
    _, _, info = build_prompt(tok, 1000, 0.5, "12345")
    minimum = info["minimum"]
    ids, _, info0 = build_prompt(tok, minimum, 0.3, "12345")
    assert len(ids) == minimum and info0["num_sentences"] == 0
    with pytest.raises(ValueError, match=rf"\b{minimum}\b"):
        build_prompt(tok, minimum - 1, 0.5, "12345")


def test_prefix_ids(tok):
    ids, _, info = build_prompt(tok, 500, 0.5, "77777", prefix_ids=[1])
    assert ids[0] == 1 and len(ids) <= 500
    assert tok.decode(ids[1:].tolist()).startswith(TASK.rstrip())
    assert tok.decode(ids[info["needle_offset"]:].tolist()).startswith(" The pass key is 77777.")


def test_piecewise_ids_match_whole_text_for_byte_level_bpe():
    """The prompt is tokenized in units; for a byte-level BPE they give the whole text's ids."""
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tk.train_from_iterator([TASK + FILLER * 4 + needle("12345") + QUESTION] * 10, trainer)
    ids, answer, info = build_prompt(tk, 400, 0.4, "31415")
    text = expected_text("31415", info["sentences_before"], info["num_sentences"])
    assert ids.tolist() == tk.encode(text).ids
    assert len(ids) <= 400 and len(answer) >= 1


class WordTokenizer:
    """Any object with encode(text).ids works (no add_special_tokens keyword here)."""

    class _Enc:
        def __init__(self, ids):
            self.ids = ids

    def encode(self, text):
        return self._Enc([sum(map(ord, w)) % 1000 for w in re.findall(r"\S+", text)])


def test_tokenizer_agnostic():
    wt = WordTokenizer()
    ids, answer, info = build_prompt(wt, 200, 0.5, "12345")
    assert len(ids) <= 200 and answer.tolist() == wt.encode("12345").ids
    src = PasskeySource(wt, min_len=60, max_len=120, seed=3)
    rec = src[5]
    assert 60 <= len(rec["input_ids"]) <= 120 and rec["loss_mask"].sum() == 1


def test_source_deterministic_and_varied(tok):
    a = PasskeySource(tok, min_len=300, max_len=2000, seed=7)
    b = PasskeySource(tok, min_len=300, max_len=2000, seed=7)
    c = PasskeySource(tok, min_len=300, max_len=2000, seed=8)
    assert len(a) == 10**9
    for i in (0, 1, 12345, 10**9 - 1):
        np.testing.assert_array_equal(a[i]["input_ids"], b[i]["input_ids"])
        np.testing.assert_array_equal(a[i]["loss_mask"], b[i]["loss_mask"])
    assert any(not np.array_equal(a[i]["input_ids"], c[i]["input_ids"]) for i in range(4))
    lengths = [len(a[i]["input_ids"]) for i in range(40)]
    depths = [a.example(i)[2]["depth"] for i in range(40)]
    assert min(lengths) >= 300 and max(lengths) <= 2000 and len(set(lengths)) > 20
    assert min(depths) < 0.2 and max(depths) > 0.8
    with pytest.raises(IndexError):
        a[10**9]


def test_source_loss_mask_only_on_answer(tok):
    src = PasskeySource(tok, max_len=1000, digits=7, seed=1)
    for i in range(10):
        rec = src[i]
        ids, mask = rec["input_ids"], rec["loss_mask"]
        assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape
        assert src.min_len <= len(ids) <= 1000
        n = int(mask.sum())
        assert n == 8 and mask[-n:].all()  # " " + 7 digits, at the end
        answer = tok.decode(ids[mask].tolist())
        key = re.search(r"The pass key is (\d+)\. Remember it\.", tok.decode(ids.tolist())).group(1)
        assert answer == " " + key and len(key) == 7
        assert tok.decode(ids[~mask].tolist()).endswith(QUESTION)


def test_source_min_len_checked(tok):
    src = PasskeySource(tok, max_len=400)
    assert len(src[0]["input_ids"]) >= src.shortest
    with pytest.raises(ValueError, match=str(src.shortest)):
        PasskeySource(tok, min_len=src.shortest - 1, max_len=400)
    with pytest.raises(ValueError, match="max_len"):
        PasskeySource(tok, min_len=src.shortest, max_len=src.shortest - 1)


def test_source_loss_on_all_tokens(tok):
    src = PasskeySource(tok, max_len=400, loss_on="all", seed=3)
    rec = src[0]
    assert rec["loss_mask"][1:].all() and not rec["loss_mask"][0]
    with pytest.raises(ValueError, match="loss_on"):
        PasskeySource(tok, max_len=400, loss_on="needle")


def test_needles_one_and_no_end_give_the_plain_records(tok):
    plain = PasskeySource(tok, min_len=300, max_len=900, seed=4)
    same = PasskeySource(tok, min_len=300, max_len=900, seed=4, needles=1, end="")
    for i in range(8):
        for k in ("input_ids", "loss_mask"):
            np.testing.assert_array_equal(plain[i][k], same[i][k])


def test_several_needles_each_answered_by_its_own_key(tok):
    src = PasskeySource(tok, min_len=600, max_len=1500, seed=2, needles=3, end=".")
    counts = []
    for i in range(30):
        rec, episodes = src[i], src.episodes(i)
        ids, mask = rec["input_ids"], rec["loss_mask"]
        assert 600 <= len(ids) <= 1500 and not mask[0]
        assert np.array_equal(ids, np.concatenate([x for p, a, _ in episodes for x in (p, a)]))
        text = tok.decode(ids.tolist())
        keys = re.findall(r"The pass key is (\d+)\. Remember it\. (\d+) is the pass key\.", text)
        assert [a for a, b in keys] == [b for a, b in keys] == [e[2]["key"] for e in episodes]
        # every question is answered by the key of the needle just before it, then the end text
        answers = re.findall(re.escape(QUESTION) + r" (\d+)\.", text)
        assert answers == [e[2]["key"] for e in episodes]
        assert text.count(TASK.strip()) == 1 and text.startswith(TASK.strip())
        # the loss is on the answers (" " + key + "."), nowhere else
        starts = np.cumsum([0] + [len(x) for p, a, _ in episodes for x in (p, a)])[:-1]
        want = np.zeros(len(ids), bool)
        for (p, a, _), s in zip(episodes, starts[1::2]):
            want[s: s + len(a)] = True
        np.testing.assert_array_equal(mask, want)
        assert tok.decode(ids[mask].tolist()) == "".join(f" {k}." for k in answers)
        counts.append(len(episodes))
    assert set(counts) == {1, 2, 3}


def test_needles_fit_short_records(tok):
    src = PasskeySource(tok, max_len=src_len(tok), needles=8)
    for i in range(10):  # room for one episode only: never more than fits
        assert len(src.episodes(i)) == 1 and len(src[i]["input_ids"]) <= src.max_len


def src_len(tok):
    return PasskeySource(tok, max_len=10_000).shortest


def test_bad_needles_and_end(tok):
    with pytest.raises(ValueError, match="needles"):
        PasskeySource(tok, max_len=400, needles=0)
    with pytest.raises(ValueError, match="digits"):
        PasskeySource(tok, max_len=400, end=" 1.")


def test_held_out_variant_uses_new_sentences_of_trained_words():
    from comet_jax.data.passkey import FILLER_HELD_OUT, QUESTION_HELD_OUT, sentences
    from comet_jax.data.passkey_tokenizer import passkey_tokenizer

    assert not set(sentences(FILLER_HELD_OUT)) & set(FILLER_SENTENCES) and QUESTION_HELD_OUT != QUESTION
    tok = passkey_tokenizer()
    ids, answer, info = build_prompt(tok, 400, 0.5, "12345", variant="held_out")
    text = tok.decode(ids.tolist())
    assert text.endswith(QUESTION_HELD_OUT) and "The sun is blue." in text and "The grass is green." not in text
    assert needle("12345").strip() in text and len(ids) <= 400
    # every word is one token of the vocabulary (none falls back to its bytes)
    for part in (" " + FILLER_HELD_OUT, " " + QUESTION_HELD_OUT):
        assert len(tok.encode(part).ids) == len(tok.pre_tokenizer.pre_tokenize_str(part))
    assert len(tok.encode(" The sun is purple.").ids) > len(tok.pre_tokenizer.pre_tokenize_str(" The sun is purple."))
    with pytest.raises(ValueError, match="variant"):
        build_prompt(tok, 400, 0.5, "12345", variant="other")


def test_questions_ask_the_same_key_again(tok):
    src = PasskeySource(tok, min_len=700, max_len=1500, seed=5, questions=3, end=".")
    counts = []
    for i in range(20):
        rec, episodes = src[i], src.episodes(i)
        ids, mask = rec["input_ids"], rec["loss_mask"]
        text = tok.decode(ids.tolist())
        keys = re.findall(r"The pass key is (\d+)\. Remember it\.", text)
        answers = re.findall(re.escape(QUESTION) + r" (\d+)\.", text)
        assert len(keys) == 1 and answers == keys * len(episodes) and len(ids) <= 1500
        assert episodes[0][2]["needle_offset"] is not None
        assert all(e[2]["needle_offset"] is None for e in episodes[1:])  # no needle before a repeat
        assert tok.decode(ids[mask].tolist()) == f" {keys[0]}." * len(episodes)
        counts.append(len(episodes))
    assert set(counts) == {1, 2, 3}
    with pytest.raises(ValueError, match="questions"):
        PasskeySource(tok, max_len=400, questions=0)


@pytest.mark.parametrize("needles", [1, 2])
def test_repeats_at_the_end_put_all_filler_before_the_first_question(tok, needles):
    kw = dict(min_len=500, max_len=1200, seed=7, questions=3, needles=needles, end=".")
    end, spread = PasskeySource(tok, repeats="end", **kw), PasskeySource(tok, **kw)
    question = tok.encode(" " + QUESTION).ids
    longest, farther = max(len(tok.encode(" " + s).ids) for s in FILLER_SENTENCES), 0
    for i in range(20):
        rec, eps, ref = end[i], end.episodes(i), spread.episodes(i)
        assert 500 - len(FILLER) <= len(rec["input_ids"]) <= 1200
        # the same keys asked the same number of times, labelled the same
        assert [e[2]["key"] for e in eps] == [e[2]["key"] for e in ref]
        assert [a.tolist() for _, a, _ in eps] == [a.tolist() for _, a, _ in ref]
        for (p, _, info), (p_ref, _, info_ref) in zip(eps, ref):
            if info["needle_offset"] is None:  # a repeat: its question and nothing else
                assert p.tolist() == question
            else:  # a first question: the filler of the key's repeats is now before it
                assert info["depth"] == info_ref["depth"]
                gap, gap_ref = len(p) - info["needle_offset"], len(p_ref) - info_ref["needle_offset"]
                # (the needle goes after a whole number of sentences: a few tokens either way)
                assert gap >= gap_ref - longest
                farther += gap > gap_ref + longest
    assert farther >= 5  # the option changes records that have repeats
    assert "repeats='end'" in repr(end) and "repeats" not in repr(spread)  # old runs still resume
    with pytest.raises(ValueError, match="repeats"):
        PasskeySource(tok, max_len=400, repeats="last")


@pytest.mark.parametrize("questions", [1, 3])
def test_random_filler_draws_training_sentences_in_any_order(tok, questions):
    src = PasskeySource(tok, min_len=400, max_len=1200, seed=3, questions=questions, end=".", filler="random")
    cyc = PasskeySource(tok, min_len=400, max_len=1200, seed=3, questions=questions, end=".")
    starts = set()
    for i in range(12):
        rec, episodes = src[i], src.episodes(i)
        ids, mask = rec["input_ids"], rec["loss_mask"]
        assert 400 <= len(ids) <= 1200 and len(episodes) >= 1
        # the same key and answers as the cycling source: only the filler differs
        assert tok.decode(ids[mask].tolist()) == tok.decode(cyc[i]["input_ids"][cyc[i]["loss_mask"]].tolist())
        info = episodes[0][2]
        key = info["key"]
        ndl = tok.encode(" " + needle(key).rstrip(" ")).ids
        assert ids[info["needle_offset"]: info["needle_offset"] + len(ndl)].tolist() == ndl
        text = tok.decode(ids.tolist())
        filler = text.replace(TASK.strip(), "").replace(needle(key).strip(), "")
        filler = filler.replace(f"{QUESTION} {key}.", "")
        found = re.findall(r"[^.]*\.", filler)
        assert found and all(s.strip() in FILLER_SENTENCES for s in found)
        assert " ".join(s.strip() for s in found) == " ".join(filler.split())  # nothing else left
        starts.add(tuple(s.strip() for s in found[:4]))
        assert not np.array_equal(ids, cyc[i]["input_ids"])
    assert len(starts) > 6  # not a fixed cycle
    with pytest.raises(ValueError, match="filler"):
        PasskeySource(tok, max_len=400, filler="shuffled")


@pytest.mark.parametrize("questions", [1, 3])
def test_named_keys_put_in_the_filler_and_asked_once_at_the_end(tok, questions):
    from comet_jax.data.passkey import NAMES, named_needle, named_question

    src = PasskeySource(tok, min_len=500, max_len=1200, seed=6, questions=questions, end=".", named=3)
    plain = PasskeySource(tok, min_len=500, max_len=1200, seed=6, questions=questions, end=".")
    counts, orders = set(), set()
    for i in range(24):
        rec, episodes = src[i], src.episodes(i)
        ids, mask = rec["input_ids"], rec["loss_mask"]
        assert 500 <= len(ids) <= 1200 and np.array_equal(ids, np.concatenate([x for p, a, _ in episodes for x in (p, a)]))
        text = tok.decode(ids.tolist())
        named = [e[2] for e in episodes if "name" in e[2]]
        passes = [e[2] for e in episodes if "name" not in e[2]]
        assert all("name" in e[2] for e in episodes[len(passes):])  # the named questions come last
        # the pass key's episodes are those of the source without names (only fewer filler tokens)
        key = passes[0]["key"]
        assert len(passes) == len(plain.episodes(i)) and key == plain.episodes(i)[0][2]["key"]
        ndl = tok.encode(" " + needle(key).rstrip(" ")).ids
        assert ids[passes[0]["needle_offset"]: passes[0]["needle_offset"] + len(ndl)].tolist() == ndl
        tail = ""
        for info in named:  # each named needle once, before every question; each asked once, in turn
            name, k = info["name"], info["key"]
            assert text.count(named_needle(name, k).strip()) == 1 and text.count(f"the {name} key?") == 1
            assert text.index(named_needle(name, k).strip()) < text.index(QUESTION)
            tail += f" {named_question(name)} {k}."
        assert text.endswith(tail) and len({i["name"] for i in named}) == len(named) <= len(NAMES)
        answers = f" {key}." * len(passes) + "".join(f" {i['key']}." for i in named)
        assert tok.decode(ids[mask].tolist()) == answers  # labels: every answer, nothing else
        counts.add(len(named))
        orders.add(tuple(i["name"] for i in named))
    assert counts == {0, 1, 2, 3} and len(orders) > 6
    short = PasskeySource(tok, max_len=src.shortest + src.named_tokens - 1, named=3)
    assert all(len(short.episodes(i)) == 1 for i in range(10))  # no room for a named key: none
    with pytest.raises(ValueError, match="named"):
        PasskeySource(tok, max_len=400, named=4)


@pytest.mark.parametrize("questions", [1, 4])
def test_shift_moves_everything_after_the_task_line_against_the_chunk_grid(questions):
    from comet_jax.data.passkey_tokenizer import passkey_tokenizer

    tok = passkey_tokenizer()  # one token per word: the needle's place in a 16-token chunk is easy to count
    kw = dict(min_len=512, max_len=512, seed=3, questions=questions, end=".")
    plain, src = PasskeySource(tok, **kw), PasskeySource(tok, shift=15, **kw)
    assert "shift=15" in repr(src) and "shift" not in repr(plain)  # old runs' grain state still matches
    lead = len(tok.encode(TASK.rstrip(" ")).ids)
    shifts, cuts, plain_cuts = set(), set(), set()
    for i in range(200):
        rec, episodes = src[i], src.episodes(i)
        ids, mask, info = rec["input_ids"], rec["loss_mask"], episodes[0][2]
        s = info.get("shift", 0)
        key = info["key"]
        assert len(ids) <= 512 and key == plain.episodes(i)[0][2]["key"] and info["depth"] == plain.episodes(i)[0][2]["depth"]
        assert np.array_equal(ids, np.concatenate([x for p, a, _ in episodes for x in (p, a)]))
        assert tok.decode(ids[:lead].tolist()) == TASK.rstrip(" ")
        # the shift is the end of the filler cycle, with no label on it
        assert (FILLER * 2).rstrip(" ").endswith(tok.decode(ids[lead:lead + s].tolist()).strip())
        assert not mask[lead:lead + s].any()
        ndl = tok.encode(" " + needle(key).rstrip(" ")).ids
        assert ids[info["needle_offset"]: info["needle_offset"] + len(ndl)].tolist() == ndl
        assert tok.decode(ids[mask].tolist()) == f" {key}." * len(episodes)
        assert np.array_equal(src.example(i)[0], episodes[0][0]) or questions > 1
        shifts.add(s)
        cuts.add(info["needle_offset"] % 16)
        plain_cuts.add(plain.episodes(i)[0][2]["needle_offset"] % 16)
    assert shifts == set(range(16))
    # without the shift, whole filler sentences after a fixed task line reach only some places
    assert len(plain_cuts) < 16 and len(cuts) == 16
    tight = PasskeySource(tok, max_len=PasskeySource(tok, max_len=512).shortest + 3, shift=50)
    assert all(tight.episodes(i)[0][2].get("shift", 0) <= 3 for i in range(20))  # never cuts into the record
    with pytest.raises(ValueError, match="shift must be >= 0"):
        PasskeySource(tok, max_len=400, shift=-1)
    with pytest.raises(ValueError, match="shift_at must be one of"):
        PasskeySource(tok, max_len=400, shift=3, shift_at="end")


def test_shift_at_start_moves_the_task_line_too():
    from comet_jax.data.passkey_tokenizer import passkey_tokenizer

    tok = passkey_tokenizer()
    kw = dict(min_len=512, max_len=512, seed=3, questions=2, end=".", shift=15)
    after, start = PasskeySource(tok, **kw), PasskeySource(tok, shift_at="start", **kw)
    assert "shift_at='start'" in repr(start) and "shift_at" not in repr(after)
    task = tok.encode(TASK.rstrip(" ")).ids
    seen = set()
    for i in range(40):
        a, b = after.episodes(i)[0], start.episodes(i)[0]
        s = b[2].get("shift", 0)
        assert s == a[2].get("shift", 0) and b[2]["needle_offset"] == a[2]["needle_offset"]
        assert np.array_equal(b[0][s:s + len(task)], task)  # the task line right after the shift
        # the same tokens, the shift moved from after the task line to before it
        assert np.array_equal(np.concatenate([b[0][s:s + len(task)], b[0][:s], b[0][s + len(task):]]), a[0])
        seen.add(s)
    assert len(seen) > 8


def test_shift_share_leaves_the_other_records_as_the_plain_source_makes_them():
    from comet_jax.data.passkey_tokenizer import passkey_tokenizer

    tok = passkey_tokenizer()
    kw = dict(min_len=512, max_len=512, seed=3, questions=2, end=".")
    plain, every, half = (PasskeySource(tok, **kw), PasskeySource(tok, shift=15, **kw),
                          PasskeySource(tok, shift=15, shift_share=0.5, **kw))
    assert "shift_share=0.5" in repr(half) and "shift_share" not in repr(every)
    unshifted = 0
    for i in range(200):
        h = half.episodes(i)
        s = h[0][2].get("shift", 0)
        if "shift" not in h[0][2]:  # not drawn for a shift: the plain record, token for token
            unshifted += 1
            assert all(np.array_equal(x[0], y[0]) for x, y in zip(h, plain.episodes(i)))
        else:  # drawn: the same shift as with every record shifted (a share of 1 keeps old draws)
            assert s == every.episodes(i)[0][2].get("shift", 0)
            assert all(np.array_equal(x[0], y[0]) for x, y in zip(h, every.episodes(i)))
    assert 80 < unshifted < 120  # about half, where every=... leaves only 1 in 16 unshifted
    quarter = PasskeySource(tok, shift=15, shift_share=0.25, **kw)
    assert 130 < sum("shift" not in quarter.episodes(i)[0][2] for i in range(200)) < 170
    with pytest.raises(ValueError, match=r"shift_share must be in \[0, 1\]"):
        PasskeySource(tok, max_len=400, shift=3, shift_share=1.5)


def test_near_puts_a_share_of_needles_right_before_the_question_and_leaves_the_rest():
    from comet_jax.data.passkey_tokenizer import passkey_tokenizer

    tok = passkey_tokenizer()
    kw = dict(min_len=512, max_len=512, seed=3, questions=4, end=".", shift=15, shift_share=0.5, wording="composed")
    plain, near = PasskeySource(tok, **kw), PasskeySource(tok, near=0.25, **kw)
    assert "near=0.25" in repr(near) and "near" not in repr(plain)
    moved = 0
    for i in range(200):
        n, p = near.episodes(i), plain.episodes(i)
        first = n[0][2]
        if first["depth"] == 1.0:  # drawn: no filler sentence between the needle and the question
            moved += 1
            assert first["sentences_before"] == first["num_sentences"]
            text = tok.decode(n[0][0].tolist())
            key = first["key"]
            assert text.rstrip().endswith("The pass key is") and f"{key} is the pass key." in text[-300:]
            assert key == p[0][2]["key"] and len(np.concatenate([e[0] for e in n])) == len(
                np.concatenate([e[0] for e in p]))  # the same key and length as the plain record
        else:  # not drawn: the plain record, token for token
            assert all(np.array_equal(x[0], y[0]) for x, y in zip(n, p))
    assert 35 < moved < 65
    with pytest.raises(ValueError, match=r"near must be in \[0, 1\]"):
        PasskeySource(tok, max_len=400, near=1.5)


def test_a_curriculum_stage_may_set_its_own_near_share():
    from comet_jax.config import ConfigError
    from comet_jax.data.sources import make_source
    from comet_jax.train.train_config import load_config
    from comet_jax.train.train_config_checks import validate
    from comet_jax.train.trainer import curriculum_stage

    stages = "data.curriculum=[{until_step: 10, seq_len: 128, passkey: {near: %s}}, {until_step: 20, seq_len: 256}]"
    cfg = load_config(None, ["data.tokenizer=passkey", "data.passkey.near=0.3", stages % 0])
    validate(cfg)
    assert [curriculum_stage(cfg, s).near for s in (0, 10, 20)] == [0.0, 0.3, 0.3]
    # a stage's share reaches the source as the trainer's loader passes it (passkey_near=stage.near;
    # that the loader does: the next test)
    kw = dict(seq_len=512, passkey_min_len=512)
    assert make_source(cfg.data, None, passkey_near=curriculum_stage(cfg, 0).near, **kw).near == 0.0
    assert make_source(cfg.data, None, **kw).near == 0.3
    with pytest.raises(ConfigError, match=r"data\.curriculum\[0\]\.passkey\.near must be in \[0, 1\]"):
        validate(load_config(None, [stages % 2]))


def test_the_trainers_loader_builds_each_stage_with_its_own_passkey_options(tmp_path, monkeypatch):
    """Trainer.loader hands a stage's shift, wording and near share to the source (the demo's
    curriculum relies on it: one wording and no near needles while the memory is learned)."""
    from comet_jax.train import trainer as trainer_mod
    from comet_jax.train.train_config import load_config

    # the demo's model and data (Trainer() builds no weights); 8 fake devices: mesh.data=8
    cfg = load_config("configs/demo_passkey.yaml", [
        f"run.dir={tmp_path}", "mesh.data=8", "data.seq_len=256", "data.passkey.near=0.2",
        "data.passkey.shift=15", "data.passkey.wording=composed",
        "data.curriculum=[{until_step: 10, seq_len: 128, passkey: {shift: 0, wording: fixed, near: 0}}]"])
    seen = []
    real = trainer_mod.make_source

    def spy(*args, **kw):
        seen.append({k: kw[k] for k in ("seq_len", "passkey_shift", "passkey_wording", "passkey_near")})
        return real(*args, **kw)

    monkeypatch.setattr(trainer_mod, "make_source", spy)
    t = trainer_mod.Trainer(cfg, log=lambda *_: None)
    for step in (0, 10):
        t.loader(trainer_mod.curriculum_stage(cfg, step))
    assert seen == [dict(seq_len=128, passkey_shift=0, passkey_wording="fixed", passkey_near=0.0),
                    dict(seq_len=256, passkey_shift=15, passkey_wording="composed", passkey_near=0.2)]
