"""The static slot layout holds exactly the variable layout of docs/design.md §1.2."""

import numpy as np
import pytest

from comet_jax.chunking import fixed
from comet_jax.config import CometConfig
from comet_jax.layout import Slots, build
from comet_jax.loss import IGNORE

CC = CometConfig(chunk_size=7, global_size=2, stride=3, budget=4, placeholder_id=90, temp_beacon_id=91,
                 global_beacon_ids=(92, 93))


def variable_chunk(text, i, produced, comet):
    """The token list of chunk i as §1.2 writes it, built token by token."""
    out = [comet.placeholder_id] * (comet.global_size if i > 0 else 0)
    out += [comet.placeholder_id] * min(comet.budget, produced)
    for k, t in enumerate(text):
        out.append(t)
        if comet.stride > 0 and ((k + 1) % comet.stride == 0 or k == len(text) - 1):
            out.append(comet.temp_beacon_id)
    return out + list(comet.global_beacon_ids)


def test_slots():
    s = Slots.of(CC)
    assert s.num_beacons == 3 and s.size == 2 + 4 + 7 + 3 + 2
    assert s.text_slots.tolist() == [6, 7, 8, 10, 11, 12, 14]
    assert s.beacon_slots.tolist() == [9, 13, 15]  # the last one after a partial group of 1
    assert sorted([*s.text_slots, *s.beacon_slots]) == list(range(s.text_start, s.beacons_start))
    assert s.beacons_start == 16


@pytest.mark.parametrize("comet", [CC, CometConfig(chunk_size=5), CometConfig(
    chunk_size=6, stride=4, budget=3, placeholder_id=90, temp_beacon_id=91)])
def test_valid_slots_spell_the_variable_layout(comet):
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 80, 23), rng.integers(0, 80, 4)]
    c = comet.chunk_size
    plans = [[c, 2] + fixed(23 - c - 2, c), [4]]
    lay = build(seqs, plans, comet)
    n = len(plans[0])
    assert lay.tokens.shape[:2] == (n, 2) and n >= 4
    produced = 0
    start = 0
    for i, length in enumerate(plans[0]):
        text = seqs[0][start:start + length].tolist()
        expect = variable_chunk(text, i, produced, comet)
        got = lay.tokens[i, 0][lay.valid[i, 0]].tolist()
        assert got == expect
        # positions restart at 0 and count only valid slots
        assert lay.positions[i, 0][lay.valid[i, 0]].tolist() == list(range(len(expect)))
        produced += -(-length // comet.stride) if comet.stride > 0 else 0
        start += length
    # the short sequence: one live chunk, then fully masked padding chunks
    assert lay.live[:, 1].tolist() == [True] + [False] * (n - 1)
    assert not lay.valid[1:, 1].any() and (lay.labels[1:, 1] == IGNORE).all()


def test_labels_taken_before_chunking():
    seq = np.arange(10, 20)
    lay = build([seq], [[4, 4, 2]], CC)
    # the last text token of chunk 0 predicts the first text token of chunk 1
    assert lay.labels[0, 0, :4].tolist() == [11, 12, 13, 14]
    assert lay.labels[2, 0, :2].tolist() == [19, IGNORE]
    assert lay.raw_index[1, 0, :4].tolist() == [4, 5, 6, 7]
    assert (lay.labels[0, 0, 4:] == IGNORE).all()


def test_temp_placeholders_and_first_flags():
    lay = build([np.arange(20)], [[7, 7, 6]], CC)
    s = Slots.of(CC)
    temp = lay.valid[:, 0, s.temp_start:s.text_start]
    # chunk 0 has none, chunk 1 has min(4, 3) right-aligned, chunk 2 the full budget
    assert temp.tolist() == [[False] * 4, [False, True, True, True], [True] * 4]
    assert lay.first[:, 0].tolist() == [True, False, False]
    assert lay.valid[:, 0, :2].tolist() == [[False, False], [True, True], [True, True]]


def test_bad_plans_are_refused():
    with pytest.raises(ValueError, match="does not split"):
        build([np.arange(10)], [[8, 2]], CC)
    with pytest.raises(ValueError, match="does not split"):
        build([np.arange(10)], [[5, 4]], CC)
    with pytest.raises(ValueError, match="num_chunks"):
        build([np.arange(10)], [[5, 5]], CC, num_chunks=1)
