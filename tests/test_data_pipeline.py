"""The grain data pipeline: byte tokenizer, sources, loader batches, state, sharding."""

import json

import numpy as np
import pytest

from comet_jax import layout
from comet_jax.chunking import PlannerMix, plan_by_name
from comet_jax.config import CometConfig
from comet_jax.data.byte_tokenizer import BYTE_VOCAB, byte_tokenizer
from comet_jax.data.jsonl import DataError
from comet_jax.data.passkey import PasskeySource
from comet_jax.data.pipeline import (ArrayRecordSource, JsonlSource, make_loader, make_source,
                                     num_chunks_for)
from comet_jax.loss import IGNORE

COMET = CometConfig(chunk_size=16, global_size=2, stride=4, budget=8, placeholder_id=300, temp_beacon_id=301,
                    global_beacon_ids=(302, 303))
MIX = PlannerMix({"fixed": 1, "right_aligned": 1, "uniform": 1, "random": 1, "semantic": 1},
                 boundary_ids=(46,))


@pytest.fixture(scope="module")
def tok():
    return byte_tokenizer()


def take(loader, n):
    return [next(loader) for _ in range(n)]


def assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def write_jsonl(path, records):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def docs(n, length=20):
    """n documents; document i starts with token 1000 + i (identifies it in a batch)."""
    return [{"input_ids": [1000 + i] + list(range(1, length - i % 7))} for i in range(n)]


# --------------------------------------------------------------------------- byte tokenizer

@pytest.mark.parametrize("text", ["ab", "hello, world", "héllo wörld — 世界 🙂", "a\nb\r\n\n\tc ", "  x  ", ""])
def test_byte_tokenizer_round_trip(tok, text):
    ids = tok.encode(text).ids
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_byte_tokenizer_ids_are_bytes(tok):
    assert BYTE_VOCAB == 256 and tok.get_vocab_size() == 256
    assert tok.encode("ab").ids == [97, 98]
    for b in range(256):
        assert tok.id_to_token(b) is not None
    every = bytes(range(256)).decode("latin-1")  # each char is 1 or 2 UTF-8 bytes
    assert tok.encode(every).ids == list(every.encode("utf-8"))


# --------------------------------------------------------------------------- layout loss masks

def test_layout_loss_masks():
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, 200, n).astype(np.int32) for n in (40, 23)]
    plans = [plan_by_name("random", len(s), COMET.chunk_size, rng) for s in seqs]
    base = layout.build(seqs, plans, COMET, num_chunks=6)
    same = layout.build(seqs, plans, COMET, num_chunks=6, loss_masks=[np.ones(len(s), bool) for s in seqs])
    for k, v in base.as_dict().items():
        np.testing.assert_array_equal(v, same.as_dict()[k])
    masks = [rng.random(len(s)) < 0.5 for s in seqs]
    out = layout.build(seqs, plans, COMET, num_chunks=6, loss_masks=masks)
    for j, (s, m) in enumerate(zip(seqs, masks)):
        raw = out.raw_index[:, j]
        lab = out.labels[:, j]
        for k in range(len(s)):
            got = lab[raw == k]
            want = s[k + 1] if k + 1 < len(s) and m[k + 1] else IGNORE
            assert got.tolist() == [want]
    np.testing.assert_array_equal(out.tokens, base.tokens)
    with pytest.raises(ValueError, match="loss mask"):
        layout.build(seqs, plans, COMET, loss_masks=[np.ones(3, bool), masks[1]])


def test_num_chunks_for_bounds_every_planner():
    rng = np.random.default_rng(1)
    fixed_only = PlannerMix({"fixed": 1})
    assert num_chunks_for(100, COMET, fixed_only) == 7
    assert num_chunks_for(100, COMET, PlannerMix({"random": 1}, min_size=4)) == 25
    for n in (1, 5, 16, 17, 33, 100, 257):
        bound = num_chunks_for(n, COMET, MIX)
        for _ in range(30):
            toks = np.where(rng.random(n) < rng.random(), 46, 7)
            plan = MIX.plan(toks, COMET.chunk_size, rng)
            assert len(plan) <= bound
            # semantic's worst case: a boundary right after each full window
            assert len(plan_by_name("semantic", toks, COMET.chunk_size, boundary_ids=(46,))) <= bound
        worst = np.full(n, 7)
        worst[:: COMET.chunk_size + 1] = 46
        assert len(plan_by_name("semantic", worst, COMET.chunk_size, boundary_ids=(46,))) <= bound


# --------------------------------------------------------------------------- sources

def test_jsonl_source_and_bad_record(tmp_path, tok):
    recs = docs(5)
    recs.insert(2, '{"input_ids": [1, 2')  # line 3: invalid JSON
    recs.insert(4, {"text": "hi there"})  # line 5: text, byte tokenizer
    path = write_jsonl(tmp_path / "d.jsonl", recs)
    src = JsonlSource(path, tokenizer=tok)
    assert len(src) == 7
    assert src[0]["input_ids"].tolist() == recs[0]["input_ids"]
    assert src[4]["input_ids"].tolist() == list(b"hi there")
    with pytest.raises(DataError, match=rf"d\.jsonl:3\b"):
        src[2]
    loader = make_loader(src, seq_len=32, batch_size=2, mode="full", seed=0, shuffle=False, num_epochs=1)
    with pytest.raises(DataError, match=rf"d\.jsonl:3\b"):
        take(loader, 4)

    skipping = JsonlSource(path, tokenizer=tok, skip_bad=True)
    loader = make_loader(skipping, seq_len=32, batch_size=2, mode="full", seed=0, shuffle=False, num_epochs=1)
    batches = list(loader)
    assert len(batches) == 3 and loader.stats["bad"] == 1 and loader.stats["docs"] == 6
    assert skipping.num_bad == 1


def test_jsonl_validation_and_short_documents(tmp_path, tok):
    path = write_jsonl(tmp_path / "v.jsonl", [{"input_ids": [5]}, {"input_ids": [1, 2, 3]}, {"text": "x"},
                                               {"input_ids": [1, 999]}, {"input_ids": [4, 5]}, {"foo": 1}])
    src = JsonlSource(path, tokenizer=tok, vocab_size=500, skip_bad=True)
    loader = make_loader(src, seq_len=8, batch_size=2, mode="full", seed=0, shuffle=False, num_epochs=1)
    batches = list(loader)
    assert len(batches) == 1 and batches[0]["lengths"].tolist() == [3, 2]
    # [5] and "x" are valid but too short: dropped; id 999 and {"foo"} are bad records.
    assert loader.stats == {"bad": 2, "short": 2, "docs": 2, "batches": 1}
    with pytest.raises(DataError, match=r"v\.jsonl:4: token id 999"):
        JsonlSource(path, vocab_size=500)[3]
    with pytest.raises(DataError, match=r"v\.jsonl:6: needs an 'input_ids' or a 'text'"):
        JsonlSource(path)[5]
    with pytest.raises(DataError, match="no such file"):
        JsonlSource(tmp_path / "missing.jsonl")


def test_arrayrecord_round_trip(tmp_path, tok):
    from array_record.python.array_record_module import ArrayRecordWriter

    paths, expect = [], []
    for f in range(2):
        p = str(tmp_path / f"part{f}.array_record")
        w = ArrayRecordWriter(p, "group_size:1")
        for i in range(4):
            rec = {"input_ids": [f, i, 7, 8]} if i != 2 else {"text": f"doc {f}"}
            w.write(json.dumps(rec).encode())
            expect.append(rec["input_ids"] if "input_ids" in rec else list(f"doc {f}".encode()))
        if f == 1:
            w.write(b"not json")
        w.close()
        paths.append(p)
    src = ArrayRecordSource(paths, tokenizer=tok)
    assert len(src) == 9
    assert [src[i]["input_ids"].tolist() for i in range(8)] == expect
    with pytest.raises(DataError, match=r"part1\.array_record:4: invalid JSON"):
        src[8]
    src = make_source({"source": "arrayrecord", "path": ",".join(paths), "skip_bad": True}, tok)
    loader = make_loader(src, seq_len=16, batch_size=3, mode="full", seed=0, shuffle=False, num_epochs=1)
    batches = list(loader)
    got = [b["tokens"][j, :n].tolist() for b in batches for j, n in enumerate(b["lengths"]) if n]
    assert got == expect and loader.stats["bad"] == 1


def test_make_source(tmp_path, tok):
    path = write_jsonl(tmp_path / "m.jsonl", docs(3))
    src = make_source({"source": "jsonl", "path": str(path)}, tok)
    assert isinstance(src, JsonlSource) and len(src) == 3

    class Cfg:
        source, seq_len, passkey_digits, seed, passkey_min_len = "passkey", 600, 4, 5, 400

    pk = make_source(Cfg(), None)
    assert isinstance(pk, PasskeySource) and pk.digits == 4 and pk.min_len == 400 and pk.max_len == 600
    assert all(400 <= len(pk[i]["input_ids"]) <= 600 for i in range(5))
    assert make_source(Cfg(), None, seed=6)[0]["input_ids"].tolist() != pk[0]["input_ids"].tolist()
    many = make_source(Cfg(), None, passkey_needles=3, passkey_end=".")
    assert many.needles == 3 and max(len(many.episodes(i)) for i in range(10)) > 1
    assert make_source(Cfg(), None, passkey_filler="random").random_filler and not pk.random_filler
    assert make_source(Cfg(), None, passkey_named=2).named == 2 and pk.named == 0
    assert make_source(Cfg(), None, passkey_repeats="end").repeats == "end" and pk.repeats == "spread"
    assert make_source(Cfg(), None, passkey_shift=15).shift == 15 and pk.shift == 0
    assert make_source(Cfg(), None, passkey_shift=3, passkey_shift_at="start").shift_at == "start"
    assert make_source(Cfg(), None, passkey_shift=3, passkey_shift_share=0.5).shift_share == 0.5 and pk.shift_share == 1
    with pytest.raises(ValueError, match="unknown source"):
        make_source(source="parquet", path="x")


def test_make_source_reads_the_training_configs_passkey_section():
    """The training config keeps passkey_X as data.passkey.X; keyword overrides still win."""
    from comet_jax.train.train_config import load_config

    d = load_config(None, ["data.passkey={digits: 4, end: ., shift: 3, shift_at: start, needles: 2}"]).data
    pk = make_source(d, None, seq_len=600, passkey_min_len=400)
    assert (pk.digits, pk.shift, pk.shift_at, pk.needles, pk.min_len) == (4, 3, "start", 2, 400)
    assert make_source(d, None, seq_len=600, passkey_min_len=400, passkey_shift=0).shift == 0
    nested = make_source({"source": "passkey", "seq_len": 600, "passkey": {"digits": 3, "named": 2}}, None)
    assert (nested.digits, nested.named, nested.needles) == (3, 2, 1)  # the rest: make_source's defaults


# --------------------------------------------------------------------------- loader

def test_comet_batches_have_fixed_shapes(tok):
    src = PasskeySource(tok, max_len=300, seed=0)
    loader = make_loader(src, seq_len=300, batch_size=3, comet_cfg=COMET, planner_mix=MIX, seed=1, shuffle=True)
    n = num_chunks_for(300, COMET, MIX)
    s, c = layout.Slots.of(COMET).size, COMET.chunk_size
    want = dict(tokens=((n, 3, s), np.int32), valid=((n, 3, s), bool), positions=((n, 3, s), np.int32),
                labels=((n, 3, c), np.int32), first=((n, 3), bool), live=((n, 3), bool), n_tokens=((), np.int32))
    for b in take(loader, 6):
        assert {k: (v.shape, v.dtype) for k, v in b.items()} == want
        assert int(b["n_tokens"]) == int((b["labels"] != IGNORE).sum()) == 3 * 6  # " " + 5 digits each
        assert b["first"][0].all() and b["live"][0].all()
        # the labels are exactly the answer digits
        digits = b["labels"][b["labels"] != IGNORE]
        assert set(bytes(digits.astype(np.uint8).tolist()).decode()) <= set(" 0123456789")
    assert loader.num_chunks == n


def test_comet_batches_reproduce_documents(tmp_path):
    path = write_jsonl(tmp_path / "r.jsonl", docs(7, length=60))
    src = JsonlSource(path)
    loader = make_loader(src, seq_len=50, batch_size=2, comet_cfg=COMET, planner_mix=MIX, seed=3, shuffle=False,
                         num_epochs=1)
    slots = layout.Slots.of(COMET)
    seen = []
    for b in loader:
        for j in range(2):
            live = b["live"][:, j]
            text = []
            for i in np.flatnonzero(live):
                tv = b["valid"][i, j][slots.text_slots]
                text += b["tokens"][i, j][slots.text_slots][tv].tolist()
            if text:
                seen.append(text)
    assert seen == [d["input_ids"][:50] for d in docs(7, length=60)]
    assert loader.stats["docs"] == 7 and loader.stats["batches"] == 4  # last batch padded with an empty row


def test_state_restore_resumes_exactly(tok):
    src = PasskeySource(tok, max_len=320, seed=2)
    kw = dict(seq_len=320, batch_size=2, comet_cfg=COMET, planner_mix=MIX, seed=11, shuffle=True)
    full = take(make_loader(src, **kw), 7)
    first = make_loader(src, **kw)
    assert_batches_equal(take(first, 3), full[:3])
    state = first.get_state()
    assert isinstance(state, bytes)
    resumed = make_loader(PasskeySource(tok, max_len=320, seed=2), **kw)
    resumed.set_state(state)
    assert_batches_equal(take(resumed, 4), full[3:])
    assert resumed.stats["batches"] == 7


def test_state_restore_across_epochs_with_skips(tmp_path):
    recs = docs(9)
    recs[4] = "{bad"
    recs[6] = {"input_ids": [3]}  # short
    path = write_jsonl(tmp_path / "e.jsonl", recs)
    kw = dict(seq_len=12, batch_size=2, comet_cfg=COMET, planner_mix=MIX, seed=4, shuffle=True, num_epochs=3)
    ref = make_loader(JsonlSource(path, skip_bad=True), **kw)
    full = list(ref)
    assert len(full) == 11 and ref.stats == {"bad": 3, "short": 3, "docs": 21, "batches": 11}
    first = make_loader(JsonlSource(path, skip_bad=True), **kw)
    take(first, 5)
    state = first.get_state()
    resumed = make_loader(JsonlSource(path, skip_bad=True), **kw)
    resumed.set_state(state)
    assert_batches_equal(list(resumed), full[5:])
    assert resumed.stats == ref.stats


def test_state_restore_with_worker_processes(tok):
    src = PasskeySource(tok, max_len=300, seed=5)
    kw = dict(seq_len=300, batch_size=2, comet_cfg=COMET, seed=0, shuffle=True, num_workers=2)
    with make_loader(src, **kw) as ref:
        full = take(ref, 6)
    with make_loader(src, **kw) as first:
        take(first, 2)
        state = first.get_state()
    with make_loader(src, **kw) as resumed:
        resumed.set_state(state)
        assert_batches_equal(take(resumed, 4), full[2:])


def test_shards_are_disjoint(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", docs(21))
    seen = []
    for shard in range(2):
        loader = make_loader(JsonlSource(path), seq_len=32, batch_size=3, mode="full", seed=9, shuffle=True,
                             shard_index=shard, shard_count=2, num_epochs=1)
        seen.append([int(t) for b in loader for t, n in zip(b["tokens"][:, 0], b["lengths"]) if n])
    assert set(seen[0]).isdisjoint(seen[1])
    # each shard reads its own contiguous 10 of the 21 records (the remainder record is left out)
    assert sorted(seen[0]) == [1000 + i for i in range(10)]
    assert sorted(seen[1]) == [1010 + i for i in range(10)]


def test_full_mode_batches(tok, tmp_path):
    src = PasskeySource(tok, min_len=260, max_len=320, seed=0)
    loader = make_loader(src, seq_len=256, batch_size=4, mode="full", seed=0, shuffle=False)
    for _, b in zip(range(3), loader):
        assert b["tokens"].shape == b["labels"].shape == (4, 256) and b["lengths"].shape == (4,)
        assert b["tokens"].dtype == b["labels"].dtype == b["lengths"].dtype == np.int32
        assert int(b["n_tokens"]) == int((b["labels"] != IGNORE).sum())
        for j, n in enumerate(b["lengths"]):
            assert 2 <= n <= 256 and not b["tokens"][j, n:].any()
            lab = b["labels"][j]
            rows = np.flatnonzero(lab != IGNORE)
            # truncated to 256 tokens the answer may be cut; labels only predict answer tokens
            assert np.array_equal(lab[rows], b["tokens"][j, rows + 1])
    # no loss mask: every next token is a label
    path = write_jsonl(tmp_path / "f.jsonl", [{"input_ids": [5, 6, 7]}, {"input_ids": list(range(1, 40))}])
    b = next(make_loader(JsonlSource(path), seq_len=16, batch_size=2, mode="full", seed=0, shuffle=False))
    assert b["lengths"].tolist() == [3, 16]
    assert b["labels"][0, :3].tolist() == [6, 7, IGNORE]
    assert b["labels"][1].tolist() == list(range(2, 17)) + [IGNORE]
    assert int(b["n_tokens"]) == 2 + 15


def test_loader_argument_errors(tok):
    src = PasskeySource(tok, max_len=300)
    with pytest.raises(ValueError, match="comet_cfg"):
        make_loader(src, seq_len=300, batch_size=2, mode="comet")
    with pytest.raises(ValueError, match="mode"):
        make_loader(src, seq_len=300, batch_size=2, mode="packed")
    with pytest.raises(ValueError, match="num_chunks"):
        make_loader(src, seq_len=300, batch_size=2, comet_cfg=COMET, num_chunks=18)  # < ceil(300 / 16)


def test_smaller_num_chunks_redraws_plans(tok):
    src = PasskeySource(tok, max_len=300, seed=0)
    mix = PlannerMix({"random": 1}, min_size=1)
    assert num_chunks_for(300, COMET, mix) == 300
    loader = make_loader(src, seq_len=300, batch_size=4, comet_cfg=COMET, planner_mix=mix, seed=0,
                         num_chunks=24)
    for b in take(loader, 3):
        assert b["tokens"].shape[0] == 24 and b["live"].any(axis=1).sum() <= 24
        assert int(b["n_tokens"]) == 4 * 6


def test_jsonl_labels_and_loss_mask_choose_the_scored_tokens(tmp_path):
    """`labels` (-100 = not scored, else the token) and `loss_mask` (0/1) decide which tokens
    are targets, in both modes: token k+1 is the label of slot k only where it is scored."""
    rng = np.random.default_rng(3)
    docs = [rng.integers(1, 250, n).tolist() for n in (40, 23)]
    scored = [rng.random(len(d)) < 0.5 for d in docs]
    path = tmp_path / "masked.jsonl"
    path.write_text(json.dumps({"input_ids": docs[0], "labels": [t if m else -100 for t, m in zip(docs[0], scored[0])]})
                    + "\n" + json.dumps({"input_ids": docs[1], "loss_mask": [int(m) for m in scored[1]]}) + "\n")
    src = JsonlSource(path)
    for mode in ("comet", "full"):
        loader = make_loader(src, seq_len=32, batch_size=2, comet_cfg=COMET, mode=mode, seed=0, shuffle=False,
                             num_epochs=1)
        batch = take(loader, 1)[0]
        for j, (doc, m) in enumerate(zip(docs, scored)):
            doc, m = np.asarray(doc[:32]), m[:32]
            want = np.where(m[1:], doc[1:], IGNORE)
            if mode == "full":
                got = batch["labels"][j, : len(doc) - 1]
            else:
                cb = layout.build([doc], [plan_by_name("fixed", len(doc), COMET.chunk_size)], COMET,
                                  num_chunks=batch["labels"].shape[0], loss_masks=[m])
                np.testing.assert_array_equal(batch["labels"][:, j], cb.labels[:, 0])
                got = cb.labels[:, 0][cb.raw_index[:, 0] >= 0][: len(doc) - 1]
            np.testing.assert_array_equal(got, want)
        assert (batch["labels"] != IGNORE).sum() == sum(int(m[1:32].sum()) for m in scored)


@pytest.mark.parametrize("record, message", [
    ({"input_ids": [1, 2, 3], "labels": [1, 5, 3]}, r"labels\[1\] = 5 is neither -100 \(not scored\) nor the token"),
    ({"input_ids": [1, 2, 3], "labels": [1, 2]}, "labels has 2 entries, input_ids 3"),
    ({"input_ids": [1, 2, 3], "loss_mask": [1, 2, 0]}, "loss_mask must hold 0 or 1, found 2"),
    ({"input_ids": [1, 2, 3], "loss_mask": [1, 1, 0], "labels": [1, 2, 3]}, "give 'labels' or 'loss_mask', not both"),
    ({"text": "abc", "labels": [1, 2, 3]}, "'labels' needs 'input_ids'"),
])
def test_bad_labels_name_the_line(tmp_path, record, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps({"input_ids": [1, 2, 3]}) + "\n" + json.dumps(record) + "\n")
    with pytest.raises(DataError, match=f"bad.jsonl:2: {message}"):
        JsonlSource(path, tokenizer=byte_tokenizer())[1]


def test_data_path_takes_globs_and_lists(tmp_path):
    """data.path names several files: a glob (matches sorted) and/or a comma-separated list; the
    records are read in that order, and a name that matches nothing is one line naming it."""
    from comet_jax.config import ConfigError
    from comet_jax.train.train_config import load_config
    from comet_jax.train.train_config_checks import validate_paths

    for name, n in (("b-books.jsonl", 3), ("a-books.jsonl", 2), ("code.jsonl", 1)):
        (tmp_path / name).write_text("".join(json.dumps({"input_ids": [len(name), k, 7]}) + "\n" for k in range(n)))
    src = make_source(source="jsonl", path=f"{tmp_path}/*-books.jsonl,{tmp_path}/code.jsonl", seq_len=8)
    assert len(src) == 6
    firsts = [(int(src[i]["input_ids"][0]), int(src[i]["input_ids"][1])) for i in range(6)]
    assert firsts == [(13, 0), (13, 1), (13, 0), (13, 1), (13, 2), (10, 0)]
    loader = make_loader(src, seq_len=8, batch_size=2, mode="full", seed=0, shuffle=False, num_epochs=1)
    assert sum(int((b["lengths"] > 0).sum()) for b in loader) == 6
    with pytest.raises(DataError, match="nothing-\\*.jsonl: no file matches"):
        make_source(source="jsonl", path=f"{tmp_path}/nothing-*.jsonl", seq_len=8)
    cfg = load_config(None, ["data.source=jsonl", f"data.path={tmp_path}/code.jsonl,{tmp_path}/missing.jsonl"])
    with pytest.raises(ConfigError, match="data.path: .*missing.jsonl does not exist"):
        validate_paths(cfg)
