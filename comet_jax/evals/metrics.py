"""Answer metrics of question-answering evaluations (pure functions, no dependencies).

EM and F1 follow the SQuAD evaluation script: both strings are normalised (lowercase, ASCII
punctuation removed, the articles a/an/the removed, whitespace collapsed), EM is equality of
the normalised strings, F1 the harmonic mean of precision and recall of their bags of words.

ROUGE-L is the F-measure (beta = 1) of the longest common subsequence of words, tokenised as
the `rouge-score` package does without stemming (lowercase, every run of characters other
than a-z and 0-9 is a separator). rouge-score itself is not a dependency (it cannot be
installed offline here); this is the same formula on the same tokens.

Each metric of a prediction against several reference answers is the maximum over them.
"""

from __future__ import annotations

import re
import string
from collections import Counter

METRICS = ("em", "f1", "rouge_l")
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answer: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(answer))


def f1(prediction: str, answer: str) -> float:
    pred, gold = normalize_answer(prediction).split(), normalize_answer(answer).split()
    if not pred or not gold:  # as SQuAD: two empty answers agree, one empty one does not
        return float(pred == gold)
    common = sum((Counter(pred) & Counter(gold)).values())
    if common == 0:
        return 0.0
    p, r = common / len(pred), common / len(gold)
    return 2 * p * r / (p + r)


def rouge_tokens(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence (O(len(a) * len(b)) time, O(len(b)) memory)."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, answer: str) -> float:
    """ROUGE-L F-measure (0 when either side has no tokens)."""
    pred, gold = rouge_tokens(prediction), rouge_tokens(answer)
    lcs = lcs_length(pred, gold) if pred and gold else 0
    if lcs == 0:
        return 0.0
    p, r = lcs / len(pred), lcs / len(gold)
    return 2 * p * r / (p + r)


_FUNCS = {"em": exact_match, "f1": f1, "rouge_l": rouge_l}


def score(prediction: str, answers: list[str]) -> dict[str, float]:
    """Every metric of `prediction`, each the best over `answers` (a non-empty list)."""
    return {name: max(fn(prediction, a) for a in answers) for name, fn in _FUNCS.items()}
