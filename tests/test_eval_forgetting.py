"""eval.forgetting: copy/LM strings, memory lengths, chunk-by-chunk argmax equals the full
teacher-forced logits, the CLI's artefacts and its refusals."""

import json

import jax
import numpy as np
import pytest

from comet_jax import checkpoint, chunking, layout
from comet_jax.config import ModelConfig
from comet_jax.convert.hf_import import added_tokens, comet_for_vocab, padded_vocab
from comet_jax.data.jsonl import comet_token_names
from comet_jax.evals.forgetting import (main, make_pair, memory_lengths, parse_lengths, samples_for,
                                        score_length, second_half_correct, text_vocab)
from comet_jax.infer.argmax import comet_predictions, full_predictions
from comet_jax.model import backbone
from comet_jax.model.comet import text_logits
from comet_jax.model.init import init_params

VOCAB = 100
COMET = comet_for_vocab(VOCAB, 16, 2, 4, 4)
MODEL = ModelConfig(vocab_size=padded_vocab(VOCAB + added_tokens(COMET)),
                    num_real_tokens=VOCAB + added_tokens(COMET), hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    params = init_params(MODEL, COMET, jax.random.key(0))
    checkpoint.save(d, params, MODEL, COMET)
    return d, params


def test_vocab_and_pairs():
    vocab = text_vocab(MODEL.real_vocab, comet_token_names(COMET))
    assert MODEL.vocab_size > MODEL.real_vocab  # padding rows exist and are left out
    assert set(vocab) == set(range(VOCAB))  # CoMeT ids (VOCAB..) left out
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)}, unk_token="w0"))
    tok.add_special_tokens(["<eos>"])  # id 50: never in plain text
    tok.add_tokens(["plain"])  # id 51: an ordinary added word
    assert set(text_vocab(MODEL.real_vocab, comet_token_names(COMET), tok)) == set(range(50)) | {51}
    rng = np.random.default_rng(0)
    for length in (2, 10, 64):
        copy, lm = make_pair(rng, vocab, length)
        h = length // 2
        assert len(copy) == len(lm) == length
        assert np.array_equal(copy[:h], copy[h:]) and np.array_equal(lm[h:], copy[h:])
        assert not np.array_equal(lm[:h], copy[:h])
        assert np.isin(np.concatenate([copy, lm]), vocab).all()
    # each length has its own seed: the same strings whatever else is run
    a, b = list(samples_for(3, 64, 2, vocab)), list(samples_for(3, 64, 2, vocab))
    assert len(a) == 2 and all(np.array_equal(x, y) for p, q in zip(a, b) for x, y in zip(p, q))


def test_second_half_only_is_scored():
    seq = np.array([5, 6, 7, 5, 6, 7])
    index = np.arange(6)
    pred = np.array([9, 9, 5, 6, 7, 1])  # perfect on the second half, wrong elsewhere
    assert second_half_correct(seq, index, pred) == (3, 3)
    pred[2] = 0
    assert second_half_correct(seq, index, pred) == (2, 3)
    assert second_half_correct(seq, np.full(6, -1), pred) == (0, 0)  # no tokens there


def test_memory_lengths_on_a_synthetic_curve():
    def e(n, copy, lm):
        return {"length": n, "copy_accuracy": copy, "lm_accuracy": lm}

    curve = [e(1024, 1.0, 0.0), e(4096, 0.995, 0.01), e(16384, 0.6, 0.01), e(65536, 0.015, 0.01),
             e(262144, 0.5, 0.0)]  # a late recovery does not extend the lengths
    assert memory_lengths(curve) == (4096, 16384)
    assert memory_lengths(curve, fine_threshold=0.5, coarse_margin=0.001) == (16384, 262144)
    assert memory_lengths([e(1024, 0.9, 0.0)]) == (None, 1024)
    assert memory_lengths(curve + [{"length": 8192, "copy_accuracy": None}]) == (4096, 16384)  # skipped
    assert memory_lengths([]) == (None, None)
    with pytest.raises(ValueError, match="even"):
        parse_lengths("1k,3")
    assert parse_lengths("4k,1k") == [1024, 4096]


def test_comet_argmax_equals_full_teacher_forced_logits(ckpt):
    _, params = ckpt
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, VOCAB, n).astype(np.int32) for n in (70, 37)]  # partial last chunks
    got = {}

    def keep(index, pred):
        for r in range(len(seqs)):
            for i, p in zip(index[r], pred[r]):
                if i >= 0:
                    got[r, int(i)] = int(p)

    # 5 chunks in blocks of 2: both compiled shapes, memories carried across calls
    comet_predictions(params, seqs, 3, MODEL, COMET, block_chunks=2, on_block=keep)
    lay = layout.build(seqs, [chunking.fixed(len(s), COMET.chunk_size) for s in seqs], COMET)
    logits = np.asarray(text_logits(params, lay.as_dict(), MODEL, COMET))  # [N, B, C, V]
    top2 = np.sort(logits, axis=-1)[..., -2:]
    ref = logits.argmax(-1)
    checked = 0
    for (n, b, c), raw in np.ndenumerate(lay.raw_index):
        if raw >= 0 and top2[n, b, c, 1] - top2[n, b, c, 0] > 1e-4:  # not a near-tie
            assert got[b, raw] == ref[n, b, c], (b, raw)
            checked += 1
    assert checked > 90 and len(got) == 70 + 37
    # full mode equals the plain backbone's logits
    full = full_predictions(params, seqs, 2, MODEL)
    ref_full = np.asarray(backbone.full_logits(params, full_tokens(seqs), np.array([70, 37]), MODEL)).argmax(-1)
    assert np.array_equal(full[0], ref_full[0]) and np.array_equal(full[1, :37], ref_full[1, :37])


@pytest.mark.parametrize("mode", ["comet", "full"])
def test_score_length_streams_pairs_in_batches(ckpt, mode):
    """Pairs drawn lazily, a batch splitting a pair (3 rows of 6): the same counts as scoring each
    sequence alone with second_half_correct."""
    _, params = ckpt
    vocab = text_vocab(MODEL.real_vocab, comet_token_names(COMET))
    pairs = list(samples_for(7, 48, 3, vocab))
    want = np.zeros((2, 2), np.int64)
    for pair in pairs:
        for k, seq in enumerate(pair):
            if mode == "full":
                want[k] += second_half_correct(seq, np.arange(len(seq)), full_predictions(params, [seq], 1, MODEL)[0])
            else:
                def add(index, pred, k=k, seq=seq):
                    want[k] += second_half_correct(seq, index[0], pred[0])
                comet_predictions(params, [seq], 1, MODEL, COMET, 2, on_block=add)
    assert 0 < want[0, 0] < want[0, 1]  # some right, some wrong: the counts can tell rows apart
    copy, lm = score_length(params, MODEL, COMET, mode, samples_for(7, 48, 3, vocab), 3, 2, n_pairs=3)
    assert (copy, lm) == (want[0, 0] / want[0, 1], want[1, 0] / want[1, 1])
    assert score_length(params, MODEL, COMET, mode, pairs, 3, 2) == (copy, lm)


def full_tokens(seqs):
    out = np.zeros((len(seqs), max(map(len, seqs))), np.int32)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


@pytest.mark.parametrize("mode", ["comet", "full"])
def test_cli_writes_the_curve(ckpt, tmp_path, mode, capsys):
    out = tmp_path / "out"
    rc = main(["--checkpoint", str(ckpt[0]), "--mode", mode, "--lengths", "40,64", "--samples", "2",
               "--batch-size", "3", "--block-chunks", "2", "--full-max", "50", "--out", str(out), "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is True and res["mode"] == mode and [e["length"] for e in res["curve"]] == [40, 64]
    for e in res["curve"][: 2 if mode == "comet" else 1]:
        assert set(e) >= {"length", "copy_accuracy", "lm_accuracy", "difference", "samples", "seconds",
                          "peak_rss_mb"}
        assert 0 <= e["copy_accuracy"] <= 1 and e["samples"] == 2 and e["peak_rss_mb"] > 0
        assert e["difference"] == pytest.approx(e["copy_accuracy"] - e["lm_accuracy"])
    if mode == "full":
        assert res["curve"][1]["copy_accuracy"] is None and "--full-max" in res["curve"][1]["skipped"]
    assert "fine_memory_length" in res and "coarse_memory_length" in res
    assert (out / "forgetting.png").stat().st_size > 1000
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last["mode"] == mode and len(last["curve"]) == 2
    # a second run into the same directory is refused, the results untouched
    before = (out / "results.json").read_bytes()
    assert main(["--checkpoint", str(ckpt[0]), "--lengths", "40", "--out", str(out), "--quiet"]) == 2
    assert "already holds" in capsys.readouterr().err
    assert (out / "results.json").read_bytes() == before


def test_resume(ckpt, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["--checkpoint", str(ckpt[0]), "--samples", "1", "--out", str(out), "--quiet"]
    assert main(base + ["--lengths", "40"]) == 0  # as if interrupted after its first length
    first = json.loads((out / "results.json").read_text())["curve"][0]
    assert main(base + ["--lengths", "64", "--resume"]) == 0  # lengths may be added, none dropped
    res = json.loads((out / "results.json").read_text())
    assert [e["length"] for e in res["curve"]] == [40, 64] and res["curve"][0] == first and res["complete"]
    capsys.readouterr()
    assert main(base + ["--lengths", "40", "--resume", "--seed", "1"]) == 2
    assert "seed" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (["--lengths", "41"], "even"), (["--lengths", "1"], "even"), (["--lengths", "4q"], "bad length"),
    (["--samples", "0"], "--samples"), (["--lengths", "40,40"], "repeats"), (["--batch-size", "0"], "--batch"),
])
def test_bad_input(ckpt, tmp_path, capsys, bad, message):
    out = tmp_path / "o"
    assert main(["--checkpoint", str(ckpt[0]), "--out", str(out), "--quiet"] + bad) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_unwritable_out_and_bad_checkpoint(ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["--checkpoint", str(ckpt[0]), "--out", str(blocker / "o"), "--lengths", "40", "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    assert main(["--checkpoint", str(tmp_path / "none"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
