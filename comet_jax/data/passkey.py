"""The synthetic passkey task (training data and the passkey evaluation).

A prompt is

    TASK, filler sentences ..., the needle (holding the key), filler sentences ..., QUESTION

and the answer is " " + key. The text is the usual passkey-retrieval haystack; it is
tokenized in units that each start with a space (" The grass is green.", ...), so for a
byte-level BPE tokenizer the concatenated ids equal the ids of the whole text, and the
length can be set to the token without re-tokenizing a million-token string.

Works with any tokenizer object whose `encode(text)` returns something with `.ids` (the
byte tokenizer of `byte_tokenizer.py`, or a `tokenizers.Tokenizer` from a checkpoint);
special tokens are not added (`add_special_tokens=False` when supported). Give `prefix_ids`
(e.g. `[bos_id]`) to start every prompt with them.
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from comet_jax.config import (PASSKEY_FILLERS, PASSKEY_NAMES as NAMES, PASSKEY_REPEATS, PASSKEY_SHIFT_AT,
                              PASSKEY_WORDINGS)

FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. "
          "There and back again. ")
TASK = ("There is an important info hidden inside a lot of irrelevant text. Find it and "
        "memorize it. I will quiz you about the important information there. ")
QUESTION = "What is the pass key? The pass key is"
# A prompt variant no training example uses (comet-passkey --prompt-variant held_out): other
# filler sentences and another question, made of the same words, so that a word-level
# tokenizer built from the texts above has a trained token for every one of them.
FILLER_HELD_OUT = "The sun is blue. The grass is yellow. There we go again. The sky is green. Here and back. "
QUESTION_HELD_OUT = "I will quiz you about the pass key. What is it? The pass key is"
VARIANTS = {"train": (FILLER, QUESTION), "held_out": (FILLER_HELD_OUT, QUESTION_HELD_OUT)}
# Training questions of data.passkey.wording=varied (QUESTION first): words of the passkey
# tokenizer only (one token each), all ending in "The pass key is"; none uses the held-out
# question's "I will quiz you about the pass key" or "What is it?".
QUESTIONS_VARIED = (QUESTION, "Find the pass key. The pass key is", "Remember the pass key? The pass key is",
                    "What is the important info? The pass key is",
                    "Here we go again. What is the pass key? The pass key is")
# Training questions of data.passkey.wording=composed: up to two lead sentences (training filler
# or task line, each at most once) and one of the stems (or none) before "The pass key is", every
# combination: what precedes the answer varies, so the model does not tie reading the key (or
# finishing it in the next chunk) to one context. The held-out question's "I will quiz you about
# the pass key" and "What is it?" are still in none of them.
QUESTION_STEMS = ("What is the pass key?", "Find the pass key.", "Remember the pass key?",
                  "What is the important info?")


def needle(key: str) -> str:
    return f"The pass key is {key}. Remember it. {key} is the pass key. "


# Keys with a name (`named` in PasskeySource): more answers per training sequence that each
# need the memory (asked once, after every needle) without a second "pass key" to confuse the
# evaluation prompt.
def named_needle(name: str, key: str) -> str:
    return f"The {name} key is {key}. Remember it. {key} is the {name} key. "


def named_question(name: str) -> str:
    return f"What is the {name} key? The {name} key is"


def sentences(filler: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in re.findall(r"[^.]*\.", filler))


FILLER_SENTENCES = sentences(FILLER)


def composed_questions() -> tuple[str, ...]:
    """Every wording of data.passkey.wording=composed (QUESTION first)."""
    leads = FILLER_SENTENCES + sentences(TASK)
    pairs = [()] + [(a,) for a in leads] + [(a, b) for a in leads for b in leads if a != b]
    out = [QUESTION]
    for pair in pairs:
        for stem in ("",) + QUESTION_STEMS:
            q = " ".join(pair + ((stem,) if stem else ()) + ("The pass key is",))
            if q not in out:
                out.append(q)
    return tuple(out)


# Phrases of the held-out question that no training question may hold.
HELD_OUT_PHRASES = ("quiz you about the pass key", "What is it?")


def scrambled_questions(count: int = 325, max_words: int = 12, seed: int = 0) -> tuple[str, ...]:
    """Every wording of data.passkey.wording=scrambled: the composed questions and as many more
    whose lead is 1..max_words words of the training texts in random order (a "." or "?" after
    some), then a stem or none, then "The pass key is". The composed leads are sentences the
    model has read; with these, what precedes the answer is any word sequence, so reading a key
    (and finishing one cut by a chunk end) cannot lean on a familiar context. Deterministic;
    none holds a phrase of the held-out question."""
    words = sorted({w for text in (FILLER, TASK, *QUESTION_STEMS) for w in re.findall(r"[A-Za-z]+", text)})
    stems = ("",) + QUESTION_STEMS
    rng = np.random.default_rng(seed)
    out = list(composed_questions())
    extra: list[str] = []
    while len(extra) < count:
        lead = [w + str(rng.choice(["", "", "", ".", "?"]))
                for w in rng.choice(words, size=int(rng.integers(1, max_words + 1)))]
        lead[-1] = lead[-1].rstrip(".?") + str(rng.choice([".", "?"]))
        stem = [stems[int(rng.integers(len(stems)))]] if rng.random() < 0.5 else []
        q = " ".join(part for part in lead + stem + ["The pass key is"] if part)
        if q not in out and q not in extra and not any(p in q for p in HELD_OUT_PHRASES):
            extra.append(q)
    return tuple(out + extra)


# the questions of each data.passkey.wording (None: the prompt variant's one question)
WORDING_QUESTIONS = {"fixed": None, "varied": QUESTIONS_VARIED, "composed": composed_questions(),
                     "scrambled": scrambled_questions()}


def encode(tokenizer: Any, text: str) -> np.ndarray:
    """Token ids of `text` without special tokens, as int32."""
    try:
        enc = tokenizer.encode(text, add_special_tokens=False)
    except TypeError:
        enc = tokenizer.encode(text)
    return np.asarray(enc.ids, dtype=np.int32)


class _Parts:
    """Token ids of the fixed units of a prompt for one tokenizer (computed once)."""

    def __init__(self, tokenizer: Any, prefix_ids: Sequence[int] = (), variant: str = "train", end: str = "",
                 wordings: Sequence[str] | None = None):
        if variant not in VARIANTS:
            raise ValueError(f"unknown prompt variant {variant!r}: use one of {sorted(VARIANTS)}")
        filler, question = VARIANTS[variant]
        self.tokenizer, self.end = tokenizer, end
        self.prefix = np.asarray(list(prefix_ids), dtype=np.int32)
        # TASK without its trailing space; every later unit starts with the space before it.
        self.task = encode(tokenizer, TASK.rstrip(" "))
        self.sentences = [encode(tokenizer, " " + s) for s in sentences(filler)]
        # every wording a question may take (`wordings`, default the variant's one); self.question
        # is the longest, so that lengths planned with it always fit
        self.wordings = [encode(tokenizer, " " + q) for q in (wordings or (question,))]
        self.question = max(self.wordings, key=len)
        self.cycle = np.concatenate(self.sentences)
        self.cum = np.cumsum([len(s) for s in self.sentences])  # tokens of the first j+1 sentences
        if any(len(s) == 0 for s in self.sentences):
            raise ValueError("the tokenizer maps a filler sentence to no tokens")

    def needle(self, key: str, name: str | None = None) -> np.ndarray:
        text = needle(key) if name is None else named_needle(name, key)
        return encode(self.tokenizer, " " + text.rstrip(" "))

    def named_question(self, name: str) -> np.ndarray:
        return encode(self.tokenizer, " " + named_question(name))

    def answer(self, key: str) -> np.ndarray:
        return encode(self.tokenizer, " " + key + self.end)

    def minimum(self, key: str) -> int:
        """Shortest prompt (no filler) for this key."""
        return len(self.prefix) + len(self.task) + self.episode_minimum(key)

    def episode_minimum(self, key: str) -> int:
        """Shortest needle + question (no filler, no task line) for this key."""
        return len(self.needle(key)) + len(self.question)

    def filler(self, count: int, order: np.ndarray | None = None) -> np.ndarray:
        """The first `count` filler sentences, concatenated: the fixed cycle, or with `order`
        (sentence indices) those sentences in that order."""
        if order is not None:
            return np.concatenate([self.cycle[:0]] + [self.sentences[i] for i in order[:count]])
        q, r = divmod(count, len(self.sentences))
        tail = self.cycle[: self.cum[r - 1]] if r else self.cycle[:0]
        return np.concatenate([np.tile(self.cycle, q), tail])

    def fitting(self, budget: int, order: np.ndarray | None = None) -> int:
        """Most filler sentences (of the cycle, or of `order`) whose tokens fit in `budget`."""
        if order is not None:
            cum = np.cumsum([len(self.sentences[i]) for i in order])
            if len(cum) and cum[-1] <= budget:
                raise ValueError(f"a random filler order of {len(order)} sentences is too short for {budget} tokens")
            return int(np.searchsorted(cum, budget, side="right"))
        q, rest = divmod(budget, int(self.cum[-1]))
        return q * len(self.sentences) + int(np.searchsorted(self.cum, rest, side="right"))

    def random_order(self, rng: np.random.Generator, n_tokens: int) -> np.ndarray:
        """Sentence indices drawn uniformly, enough to fill more than n_tokens."""
        shortest = min(len(s) for s in self.sentences)
        return rng.integers(0, len(self.sentences), size=max(n_tokens, 0) // shortest + 1)

    def episode(self, n_tokens: int, depth: float, key: str, rng: np.random.Generator | None = None,
                extra: Sequence[tuple[np.ndarray, float]] = (), question: np.ndarray | None = None):
        """Filler with the needle after `depth` of it, then the question: at most n_tokens.
        The filler cycles through the sentences, or with `rng` draws each sentence at random.
        `extra`: more needles (ids, depth), each put after `depth` of the filler too. `question`:
        its ids (default self.question). Returns (ids, needle offset in them, sentences before the needle, sentences)."""
        ndl = self.needle(key)
        question = self.question if question is None else question
        budget = n_tokens - len(ndl) - len(question) - sum(len(ids) for ids, _ in extra)
        order = None if rng is None else self.random_order(rng, budget)
        n_sent = self.fitting(budget, order)
        body = self.filler(n_sent, order)
        cut = lambda d: len(self.filler(int(round(d * n_sent)), order))  # noqa: E731
        # the pass key's needle goes first among needles at the same place (stable sort)
        places = sorted([(cut(depth), ndl, True)] + [(cut(d), ids, False) for ids, d in extra], key=lambda p: p[0])
        pieces, offset, at = [], 0, 0
        for pos, ids, main in places:
            pieces.append(body[at:pos])
            if main:
                offset = sum(len(p) for p in pieces)
            pieces.append(ids)
            at = pos
        pieces += [body[at:], question]
        return np.concatenate(pieces), offset, int(round(depth * n_sent)), n_sent

    def build(self, n_tokens: int, depth: float, key: str, rng: np.random.Generator | None = None,
              question: np.ndarray | None = None):
        fixed = self.minimum(key)
        if n_tokens < fixed:
            raise ValueError(f"n_tokens={n_tokens} is too small for the passkey prompt: the task line, "
                             f"needle and question alone take {fixed} tokens (the minimum)")
        if not 0.0 <= depth <= 1.0:
            raise ValueError(f"depth must be in [0, 1], got {depth}")
        lead = len(self.prefix) + len(self.task)
        body, offset, before, n_sent = self.episode(n_tokens - lead, depth, key, rng, question=question)
        ids = np.concatenate([self.prefix, self.task, body])
        info = dict(needle_offset=int(lead + offset), needle_len=int(len(self.needle(key))), sentences_before=before,
                    num_sentences=int(n_sent), depth=float(depth), key=key, minimum=int(fixed))
        return ids.astype(np.int32), self.answer(key), info


def build_prompt(tokenizer: Any, n_tokens: int, depth: float, key: str | int,
                 prefix_ids: Sequence[int] = (), variant: str = "train") -> tuple[np.ndarray, np.ndarray, dict]:
    """A passkey prompt of at most `n_tokens` tokens (the answer not included).

    The needle sits after round(depth * S) of the S filler sentences (depth 0: right after the
    task line; 1: right before the question). The prompt is filled with whole filler sentences,
    so its length is n_tokens minus less than one sentence. Returns (ids int32, answer_ids int32
    = the ids of " " + key, info) with info["needle_offset"] (token offset of the needle),
    ["sentences_before"], ["num_sentences"] and ["minimum"] (shortest possible prompt).
    Raises ValueError, naming the minimum, when n_tokens cannot hold task, needle and question.
    variant "held_out" uses filler sentences and a question that training never uses.
    """
    return _Parts(tokenizer, prefix_ids, variant).build(int(n_tokens), float(depth), str(key))


def random_key(rng: np.random.Generator, digits: int = 5) -> str:
    """`digits` decimal digits, each uniform (leading zeros allowed)."""
    return "".join(str(d) for d in rng.integers(0, 10, size=digits))


LOSS_ON = ("answer", "all")


class PasskeySource:
    """Random-access (grain-compatible) source of passkey examples.

    Record `index` is a pure function of (seed, index): a key of `digits` digits, a depth
    uniform in [0, 1), and a total length (prompt + answer) uniform in [min_len, max_len]
    tokens. Returns {"input_ids": int32 prompt + answer, "loss_mask": bool, True only on the
    answer tokens, or with loss_on="all" on every token but the first (language modelling of
    the whole prompt: the needle repeats its key, so copying is learned from it too)}. `min_len=None` uses the shortest length every key fits in.

    needles > 1: a record holds 1..needles episodes (uniform; as many as fit the length),
    each its own filler with its own key at its own depth, then the question and that key
    as the answer, all after one task line: several supervised answers per sequence, each
    about the latest key. questions > 1: each needle is asked about 1..questions times (uniform;
    as many as fit), each question after more filler, each answer supervised (more labelled
    tokens per sequence with no newer key to forget the old one for). end: text after every answer's digits (e.g. "." so that a model
    learns where the key stops and exact match can be scored). filler="random": every filler
    sentence drawn at random from the training sentences instead of their fixed cycle (a model
    then cannot key its read or write on one exact context). needles=1, questions=1, end="" and
    filler="cycle" give the records of the plain source, unchanged. named > 0: a record also
    holds 0..named keys with a name ("The blue key is 12345. ..."; names from NAMES), each put
    at a random depth of the first episode's filler and asked about once at the end of the
    record, in random order, each answer supervised (as many as fit): labels that all need the
    memory, none of which can be copied from an earlier answer. repeats="end": a needle's later
    questions come straight after its first answer, with no filler between them, so all the
    filler of its episodes lies between the needle and the first question (the one answer that
    needs the memory travels as far as the record allows); the same keys, depths and lengths as
    "spread" (up to whole filler sentences). shift > 0: the first prompt gets 0..shift tokens
    of filler (uniform; the end of the filler cycle) between the task line and the rest, and the
    record is that much shorter otherwise: everything after the task line moves against the
    chunk grid, so a model sees every alignment of its needles and questions while the record
    keeps its length (the draw has its own random stream: the rest of a record is the record of
    that shorter length). shift_at="start": those tokens go before the task line instead (after
    the prefix), so the task line moves too and a needle at depth 0 still follows it directly.
    shift_share < 1: only that share of records gets a shift (drawn per record), the rest none.
    wording="varied": each question is one of QUESTIONS_VARIED (drawn per question) instead of
    always QUESTION, so that a model does not tie its answer to one wording; "composed": one of
    composed_questions() (lead sentences and a stem before "The pass key is", every combination);
    "scrambled": one of scrambled_questions() (those and as many with random word sequences as leads).
    near > 0: that share of records (drawn per record) puts the first needle right before its
    question (depth 1) instead of at a uniform depth: a key a few tokens back, read from the temp
    memory when the answer starts a chunk, is otherwise rare in training.
    """

    def __init__(self, tokenizer: Any, *, max_len: int, min_len: int | None = None, digits: int = 5,
                 seed: int = 0, num_records: int = 10**9, prefix_ids: Sequence[int] = (), loss_on: str = "answer",
                 needles: int = 1, questions: int = 1, end: str = "", filler: str = "cycle", named: int = 0,
                 repeats: str = "spread", shift: int = 0, shift_at: str = "task",
                 shift_share: float = 1.0, wording: str = "fixed", near: float = 0.0):
        if digits < 1:
            raise ValueError(f"digits must be >= 1, got {digits}")
        if needles < 1 or questions < 1:
            raise ValueError(f"passkey needles and questions must be >= 1, got {needles} and {questions}")
        if loss_on not in LOSS_ON:
            raise ValueError(f"passkey loss_on must be one of {LOSS_ON}, got {loss_on!r}")
        if not 0 <= named <= len(NAMES):
            raise ValueError(f"passkey named must be in [0, {len(NAMES)}] (the names {NAMES}), got {named}")
        if filler not in PASSKEY_FILLERS:
            raise ValueError(f"passkey filler must be one of {PASSKEY_FILLERS}, got {filler!r}")
        if repeats not in PASSKEY_REPEATS:
            raise ValueError(f"passkey repeats must be one of {PASSKEY_REPEATS}, got {repeats!r}")
        if shift < 0:
            raise ValueError(f"passkey shift must be >= 0 tokens, got {shift}")
        if shift_at not in PASSKEY_SHIFT_AT:
            raise ValueError(f"passkey shift_at must be one of {PASSKEY_SHIFT_AT}, got {shift_at!r}")
        if not 0.0 <= shift_share <= 1.0:
            raise ValueError(f"passkey shift_share must be in [0, 1], got {shift_share}")
        if not 0.0 <= near <= 1.0:
            raise ValueError(f"passkey near must be in [0, 1], got {near}")
        self.near = float(near)
        if wording not in PASSKEY_WORDINGS:
            raise ValueError(f"passkey wording must be one of {PASSKEY_WORDINGS}, got {wording!r}")
        self.wording = wording
        self.random_filler, self.repeats, self.shift, self.shift_at = filler == "random", repeats, int(shift), shift_at
        self.shift_share = float(shift_share)
        if any(ch.isdigit() for ch in end):
            raise ValueError(f"passkey end {end!r} must not contain digits (it marks where the key stops)")
        self.loss_on, self.needles, self.questions, self.named = loss_on, int(needles), int(questions), int(named)
        self._parts = _Parts(tokenizer, prefix_ids, end=end,
                             wordings=WORDING_QUESTIONS[wording])
        self.digits, self.seed, self.num_records = int(digits), int(seed), int(num_records)
        # Keys can tokenize to different lengths (BPE); take the longest of a few probes.
        probes = ["0" * digits, "9" * digits, "1234567890" * (digits // 10) + "1234567890"[: digits % 10]]
        self.shortest = max(self._parts.minimum(k) + len(self._parts.answer(k)) for k in probes)
        # tokens one more episode adds at least (needle, question, answer)
        self.episode_tokens = max(self._parts.episode_minimum(k) + len(self._parts.answer(k)) for k in probes)
        self.question_tokens = len(self._parts.question) + max(len(self._parts.answer(k)) for k in probes)
        # tokens one named key adds (its needle, question and answer)
        self.named_tokens = max(len(self._parts.needle(k, n)) + len(self._parts.named_question(n))
                                + len(self._parts.answer(k)) for k in probes for n in NAMES)
        self.min_len = self.shortest if min_len is None else int(min_len)
        self.max_len = int(max_len)
        if self.min_len < self.shortest:
            raise ValueError(f"passkey min_len={self.min_len} is too small: a prompt with a {digits}-digit "
                             f"key and its answer need at least {self.shortest} tokens")
        if self.max_len < self.min_len:
            raise ValueError(f"passkey max_len={self.max_len} < min_len={self.min_len}")

    def __len__(self) -> int:
        return self.num_records

    def __repr__(self) -> str:
        return (f"PasskeySource(min_len={self.min_len}, max_len={self.max_len}, digits={self.digits}, "
                f"seed={self.seed}, num_records={self.num_records}, prefix={self._parts.prefix.tolist()}, "
                f"needles={self.needles}, questions={self.questions}, named={self.named}, end={self._parts.end!r}, "
                f"filler={'random' if self.random_filler else 'cycle'!r}"
                # only when not the default: runs saved before the option existed still resume
                # (grain compares this text with the one in the checkpoint)
                + (f", repeats={self.repeats!r}" if self.repeats != "spread" else "")
                + (f", shift={self.shift}" if self.shift else "")
                + (f", shift_share={self.shift_share}" if self.shift and self.shift_share != 1.0 else "")
                + (f", wording={self.wording!r}" if self.wording != "fixed" else "")
                + (f", near={self.near}" if self.near else "")
                + (f", shift_at={self.shift_at!r})" if self.shift and self.shift_at != "task" else ")"))

    def _draw(self, index: int):
        if not 0 <= index < self.num_records:
            raise IndexError(f"index {index} outside [0, {self.num_records})")
        rng = np.random.default_rng([self.seed, int(index)])
        key = random_key(rng, self.digits)
        depth = float(rng.random())
        length = int(rng.integers(self.min_len, self.max_len + 1))
        # its own stream: with near 0 every record is what it was before the option
        if self.near and np.random.default_rng([self.seed, int(index), 2]).random() < self.near:
            depth = 1.0
        return rng, key, depth, length

    def example(self, index: int) -> tuple[np.ndarray, np.ndarray, dict]:
        """(prompt ids, answer ids, info) of record `index` (its first episode when needles > 1)."""
        rng, key, depth, length = self._draw(index)
        shift = self._shift(index, length)
        return self._shifted([self._one(index, key, depth, length - shift, rng)], shift)[0]

    def _one(self, index: int, key: str, depth: float, length: int, rng: np.random.Generator):
        answer = self._parts.answer(key)
        n = max(length - len(answer), self._parts.minimum(key))
        if n + len(answer) > self.max_len:
            raise ValueError(f"passkey record {index}: key {key} needs {n + len(answer)} tokens > "
                             f"max_len={self.max_len}")
        return self._parts.build(n, depth, key, rng if self.random_filler else None, question=self._question(rng))

    def _question(self, rng: np.random.Generator) -> np.ndarray:
        """The ids of one question: drawn among the wordings only when there are several (so
        that records with one wording use the random stream as before)."""
        qs = self._parts.wordings
        return qs[int(rng.integers(len(qs)))] if len(qs) > 1 else qs[0]

    def episodes(self, index: int) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """Record `index` as (prompt ids, answer ids, info) per question; the first prompt starts
        with the prefix and task line, their concatenation (with the answers) is the record.
        A prompt that asks again about the key before it has no needle (info["needle_offset"] None)."""
        rng, key, depth, length = self._draw(index)
        shift = self._shift(index, length)
        return self._shifted(self._episodes(index, rng, key, depth, length - shift), shift)

    def _shift(self, index: int, length: int) -> int:
        if not self.shift:
            return 0
        rng = np.random.default_rng([self.seed, int(index), 1])
        drawn = int(rng.integers(0, self.shift + 1))  # first: a share of 1 keeps the draws of old runs
        if self.shift_share < 1.0 and rng.random() >= self.shift_share:
            return 0
        return min(drawn, length - self.shortest)

    def _shifted(self, out: list, shift: int) -> list:
        """`out` with `shift` filler tokens after the first prompt's task line (or before it)."""
        if not shift:
            return out
        ids, answer, info = out[0]
        lead = len(self._parts.prefix) + (len(self._parts.task) if self.shift_at == "task" else 0)
        cycle = self._parts.cycle
        pad = np.tile(cycle, -(-shift // len(cycle)))[-shift:]
        moved = None if info["needle_offset"] is None else info["needle_offset"] + shift
        ids = np.concatenate([ids[:lead], pad, ids[lead:]]).astype(np.int32)
        return [(ids, answer, dict(info, needle_offset=moved, shift=shift))] + out[1:]

    def _episodes(self, index: int, rng: np.random.Generator, key: str, depth: float, length: int):
        count = int(rng.integers(1, self.needles + 1)) if self.needles > 1 else 1
        asks = int(rng.integers(1, self.questions + 1)) if self.questions > 1 else 1
        # as many as fit: the first episode takes `shortest`, a further needle `episode_tokens`,
        # a further question `question_tokens` (fewer questions first, then fewer needles)
        while count * asks > 1 and (self.shortest + (count - 1) * self.episode_tokens
                                    + count * (asks - 1) * self.question_tokens) > length:
            count, asks = (count, asks - 1) if asks > 1 else (count - 1, asks)
        # named keys: as many as fit beside the episodes (the draws only when named > 0, so
        # that records without them are unchanged)
        n_named = int(rng.integers(0, self.named + 1)) if self.named else 0
        while n_named and (self.shortest + (count - 1) * self.episode_tokens + count * (asks - 1)
                           * self.question_tokens + n_named * self.named_tokens) > length:
            n_named -= 1
        if count * asks == 1 and not n_named:
            return [self._one(index, key, depth, length, rng)]
        keys = [key] + [random_key(rng, self.digits) for _ in range(count - 1)]
        depths = [depth] + [float(d) for d in rng.random(count - 1)]
        named = [(str(n), random_key(rng, self.digits), float(rng.random()))
                 for n in rng.permutation(NAMES)[:n_named]] if n_named else []
        extra = [(self._parts.needle(k, n), d) for n, k, d in named]
        asked = [(self._parts.named_question(n), self._parts.answer(k), dict(key=k, name=n))
                 for n, k, _ in (named[i] for i in rng.permutation(n_named))] if n_named else []
        plan = [(k, d if j == 0 else None) for k, d in zip(keys, depths) for j in range(asks)]
        answers = [self._parts.answer(k) for k, _ in plan]
        lead = len(self._parts.prefix) + len(self._parts.task)
        minima = [(self._parts.episode_minimum(k) if d is not None else len(self._parts.question)) + len(a)
                  for (k, d), a in zip(plan, answers)]
        minima[0] += sum(len(ids) for ids, _ in extra)
        slack = length - lead - sum(minima) - sum(len(q) + len(a) for q, a, _ in asked)
        cuts = np.diff(np.concatenate([[0], np.sort(rng.integers(0, slack + 1, size=len(plan) - 1)), [slack]]))
        if self.repeats == "end":  # each key's filler all before its first question
            per_key = cuts.reshape(count, asks)
            cuts = np.zeros_like(per_key)
            cuts[:, 0] = per_key.sum(axis=1)
            cuts = cuts.reshape(-1)
        out = []
        for i, ((k, d), a, m, more) in enumerate(zip(plan, answers, minima, cuts)):
            budget = int(m + more - len(a))
            if d is None:  # the same key asked again after more filler
                order = self._parts.random_order(rng, budget) if self.random_filler else None
                question = self._question(rng)
                n_sent = self._parts.fitting(budget - len(question), order)
                body, offset, before = np.concatenate([self._parts.filler(n_sent, order), question]), None, None
            else:
                body, offset, before, n_sent = self._parts.episode(budget, d, k, rng if self.random_filler else None,
                                                                   extra if i == 0 else (), self._question(rng))
            head = np.concatenate([self._parts.prefix, self._parts.task]) if i == 0 else body[:0]
            out.append((np.concatenate([head, body]).astype(np.int32), a,
                        dict(needle_offset=None if offset is None else int(len(head) + offset),
                             sentences_before=before, num_sentences=int(n_sent), depth=d, key=k)))
        out += [(q.astype(np.int32), a, dict(info, needle_offset=None)) for q, a, info in asked]
        return out

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        parts, masks = [], []
        for prompt, answer, _ in self.episodes(int(index)):
            parts += [prompt, answer]
            masks += [np.full(len(prompt), self.loss_on == "all"), np.ones(len(answer), bool)]
        ids = np.concatenate(parts).astype(np.int32)
        mask = np.concatenate(masks)
        mask[0] = False  # nothing predicts the first token
        return {"input_ids": ids, "loss_mask": mask}
