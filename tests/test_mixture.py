"""data.mixture: a weighted mixture of JSONL files, read through the training pipeline in the
weights' proportions, the same on every run, and resumed exactly from a loader's state."""

import json
from collections import Counter

import numpy as np
import pytest

from comet_jax.config import CometConfig, ConfigError
from comet_jax.data.mixture import MixtureSource
from comet_jax.data.pipeline import make_loader, make_source
from comet_jax.train.train_config import load_config
from comet_jax.train.train_config_checks import validate, validate_paths

COMET = CometConfig(chunk_size=8, global_size=2, stride=4, budget=4, placeholder_id=250, temp_beacon_id=251,
                    global_beacon_ids=(252, 253))


def write(path, first_token, n):
    """n records whose first token names the file and second the record."""
    path.write_text("".join(json.dumps({"input_ids": [first_token, i, 7, 8, 9]}) + "\n" for i in range(n)))
    return str(path)


@pytest.fixture
def files(tmp_path):
    return write(tmp_path / "books.jsonl", 1, 30), write(tmp_path / "code.jsonl", 2, 4)


def docs(batches):
    """(file, record) of every document in comet batches (the first text slot of chunk 0)."""
    out = []
    for b in batches:
        for j in range(b["tokens"].shape[1]):
            if b["live"][0, j]:
                text = b["tokens"][0, j][b["valid"][0, j]]
                out.append((int(text[0]), int(text[1])))
    return out


def test_one_pass_reads_every_record_in_the_weights_proportions(files):
    books, code = files
    src = make_source({"source": "jsonl", "mixture": [{"path": books, "weight": 3}, {"path": code, "weight": 1}],
                       "seq_len": 16})
    assert isinstance(src, MixtureSource) and len(src) == 40  # 30 books / 0.75; code (4) repeated 3 times
    seen = [(int(r["input_ids"][0]), int(r["input_ids"][1])) for r in (src[i] for i in range(len(src)))]
    counts = Counter(f for f, _ in seen)
    assert counts == {1: 30, 2: 10}
    assert {r for f, r in seen if f == 1} == set(range(30)) and {r for f, r in seen if f == 2} == set(range(4))


def test_shuffled_batches_are_deterministic_and_resume_exactly(files):
    books, code = files
    cfg = {"source": "jsonl", "mixture": [{"path": books, "weight": 1}, {"path": code, "weight": 1}], "seq_len": 16}

    def loader():
        return make_loader(make_source(cfg), seq_len=16, batch_size=4, comet_cfg=COMET, seed=5)

    a = loader()
    first = [next(a) for _ in range(6)]
    state = a.get_state()
    rest = [next(a) for _ in range(4)]
    b = loader()
    assert docs([next(b) for _ in range(6)]) == docs(first)
    c = loader()
    c.set_state(state)
    assert docs([next(c) for _ in range(4)]) == docs(rest)
    counts = Counter(f for f, _ in docs(first + rest))
    assert counts[2] >= 10  # half the mixture: the 4 code records repeated, not drowned by 30 books


def test_config_reads_a_mixture_and_refuses_bad_ones(files, tmp_path):
    books, code = files
    cfg = load_config(None, ["data.source=jsonl", f"data.mixture=[{{path: {books}, weight: 3}}, {{path: {code}}}]"])
    assert [(m.path, m.weight) for m in cfg.data.mixture] == [(books, 3.0), (code, 1.0)]
    validate_paths(cfg)
    validate(cfg)
    bad = [(["data.source=jsonl", f"data.mixture=[{{path: {books}, weight: 0}}]"], r"data\.mixture\[0\]\.weight must be > 0"),
           (["data.source=jsonl", f"data.path={books}", f"data.mixture=[{{path: {code}}}]"], "remove data.path"),
           ([f"data.mixture=[{{path: {code}}}]"], r"set data.source \(now passkey\)"),
           (["data.source=jsonl", "data.mixture=[{weight: 2}]"], r"data\.mixture\[0\] must be a mapping \{path: str\}")]
    for overrides, message in bad:
        with pytest.raises(ConfigError, match=message):
            validate(load_config(None, overrides))
    with pytest.raises(ConfigError, match=r"data\.mixture\[1\]\.path: .*nothing.jsonl does not exist"):
        validate_paths(load_config(None, ["data.source=jsonl", f"data.mixture=[{{path: {books}}}, "
                                          f"{{path: {tmp_path / 'nothing.jsonl'}}}]"]))
