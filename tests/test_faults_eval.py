"""Fault and misuse hardening of eval.passkey, eval.bench_long, eval.loss and the JSONL reader:
output checked before the work and written per step, --resume, bad bytes and CoMeT token ids
named by file:line, positions past the checkpoint's range warned about, long documents
tokenised by prefix; one command per --out, a training run directory as --checkpoint. New names are imported inside the tests, so each fails on its own."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest

from comet_jax import checkpoint
from comet_jax.data.byte_tokenizer import byte_tokenizer
from comet_jax.data.passkey import FILLER, TASK
from comet_jax.data.passkey_tokenizer import passkey_tokenizer
from test_eval_passkey import COMET, ckpt  # noqa: F401  (a pytest fixture)

from eval import bench_long
from comet_jax.evals import loss as eval_loss
from comet_jax.evals import passkey

PASSKEY_ARGS = ["--tokenizer", "byte", "--lengths", "300", "--depths", "0,1", "--samples", "1",
                "--batch-size", "1", "--mode", "full", "--quiet"]
VARYING = ("seconds", "peak_memory_mb", "device_peak_memory_mb")  # measurements, not results


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


# --------------------------------------------------------------------------- eval.passkey

def test_passkey_checks_out_before_loading_the_model(ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    def no_load(*a, **k):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(checkpoint, "load_params", no_load)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    for out, message in ((a_file, "not a directory"), (a_file / "sub", "is not a directory")):
        assert passkey.main(["--checkpoint", str(ckpt), "--out", str(out)] + PASSKEY_ARGS) == 2
        assert message in one_error_line(capsys.readouterr().err)
    assert a_file.read_text() == "x" and sorted(tmp_path.iterdir()) == [a_file]


def test_passkey_resume_equals_an_uninterrupted_run(ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    from comet_jax.infer.generate import Generator

    calls, real = [], Generator.generate

    def generate(self, *a, **k):
        calls.append(1)
        if stop_at and len(calls) == stop_at:
            raise RuntimeError("killed")  # (not KeyboardInterrupt: that would stop pytest on the old code)
        return real(self, *a, **k)

    monkeypatch.setattr(Generator, "generate", generate)

    def run(out, *extra):
        calls.clear()
        rc = passkey.main(["--checkpoint", str(ckpt), "--out", str(out)] + PASSKEY_ARGS + list(extra))
        return rc, capsys.readouterr().err

    stop_at = 0
    assert run(tmp_path / "whole")[0] == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())

    stop_at = 2  # killed in the second of two cells: the first is on disk
    part = tmp_path / "part"
    with pytest.raises(RuntimeError, match="killed"):
        run(part)
    capsys.readouterr()
    saved = json.loads((part / "results.json").read_text())
    assert len(saved["cells"]) == 1 and saved["complete"] is False and (part / "heatmap.png").exists()

    stop_at = 0
    rc, err = run(part)  # no --resume: refused, not overwritten
    assert rc == 2 and "--resume" in one_error_line(err) and not calls
    rc, err = run(part, "--resume", "--seed", "1")  # other settings: refused, the setting named
    assert rc == 2 and "seed" in one_error_line(err) and not calls
    rc, err = run(part, "--resume", "--jitter", "8")
    assert rc == 2 and "jitter" in one_error_line(err) and not calls
    assert json.loads((part / "results.json").read_text()) == saved

    assert run(part, "--resume")[0] == 0
    assert len(calls) == 1  # only the missing cell ran
    resumed = json.loads((part / "results.json").read_text())

    def results(r):
        return {**{k: v for k, v in r.items() if k not in VARYING + ("cells",)},
                "cells": [{k: v for k, v in c.items() if k not in VARYING} for c in r["cells"]]}

    assert results(resumed) == results(whole) and resumed["complete"] is True
    assert not [p.name for p in part.iterdir() if p.name.startswith(".")]  # no temp files left

    meta = ckpt / checkpoint.META_FILE  # as if re-exported into the same directory
    os.utime(meta, ns=(meta.stat().st_atime_ns, meta.stat().st_mtime_ns + 10 ** 9))
    rc, err = run(part, "--resume")
    assert rc == 2 and "checkpoint_files" in one_error_line(err) and not calls


# --------------------------------------------------------------------------- eval.bench_long

def test_bench_long_checks_out_first_and_writes_every_measurement(tmp_path, monkeypatch, capsys):
    spawned = []

    def spawn(spec, timeout_s):
        spawned.append(spec)
        if len(spawned) == 2:
            raise RuntimeError("killed")
        return {"mode": spec["mode"], "length": spec["length"], "status": "failed", "reason": "test"}

    monkeypatch.setattr(bench_long, "spawn", spawn)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    args = ["--lengths", "512,1k", "--modes", "comet"]
    assert bench_long.main(args + ["--out", str(a_file)]) == 2
    assert "not a directory" in one_error_line(capsys.readouterr().err) and not spawned

    out = tmp_path / "bench"
    with pytest.raises(RuntimeError, match="killed"):
        bench_long.main(args + ["--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] is False and [m["length"] for m in res["measurements"]] == [512]


# --------------------------------------------------------------------------- eval.loss and the JSONL reader

@pytest.fixture(scope="module")
def ckpt32(ckpt, tmp_path_factory):  # noqa: F811
    """The tiny passkey checkpoint, its meta recording max_position_embeddings 32 (as the converter's)."""
    d = tmp_path_factory.mktemp("ckpt32") / "tiny"
    shutil.copytree(ckpt, d)
    meta = json.loads((d / checkpoint.META_FILE).read_text())
    (d / checkpoint.META_FILE).write_text(json.dumps({**meta, "max_position_embeddings": 32}))
    return d


def test_loss_names_a_line_that_is_not_utf8(ckpt32, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_bytes(b'{"input_ids": [1, 2, 3]}\n{"text": "caf\xe9"}\n')
    assert eval_loss.main(["--checkpoint", str(ckpt32), "--data", str(data)]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: {data}:2: not valid UTF-8"
    from comet_jax.data.jsonl import DataError, parse_bytes

    with pytest.raises(DataError, match="^rec:7: not valid UTF-8$"):  # what the training pipeline shares
        parse_bytes(b'{"text": "\xff"}', "rec:7")
    with pytest.raises(DataError, match="^rec:8: text is not valid Unicode"):  # UTF-8, but a lone surrogate
        parse_bytes(b'{"text": "a\\ud800"}', "rec:8", byte_tokenizer())


def test_loss_refuses_comet_token_ids(ckpt32, tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n' + json.dumps({"input_ids": [5, COMET.temp_beacon_id, 7]}) + "\n")
    assert eval_loss.main(["--checkpoint", str(ckpt32), "--data", str(data)]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"{data}:2:" in line and f"token id {COMET.temp_beacon_id} is the CoMeT temp beacon" in line


def test_loss_warns_past_max_position_embeddings(ckpt32, tmp_path, capsys):
    seqs = [np.arange(1, 11), np.arange(1, 41)]  # 10 and 40 tokens; the checkpoint knows 32 positions
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"input_ids": s.tolist()}) + "\n" for s in seqs))
    assert eval_loss.main(["--checkpoint", str(ckpt32), "--data", str(data)]) == 0  # a warning, not an error
    warnings = [w for w in capsys.readouterr().err.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 1 and f"{data}:2, 40 tokens" in warnings[0] and "max_position_embeddings 32" in warnings[0]
    # comet mode: positions restart in every chunk; only a chunk's span (text + beacons + memory) counts
    from comet_jax.evals.loss import position_warning

    small = dataclasses.replace(COMET, chunk_size=8)  # span 2*4 + 8 + 8 + 1 = 25
    assert position_warning(seqs, "d", "comet", small, 32) is None
    assert "per chunk" in position_warning(seqs, "d", "comet", COMET, 32)  # C 64: span 4+8+40+5+4 = 61
    assert position_warning(seqs, "d", "full", COMET, None) is None  # older checkpoints: no warning


# --------------------------------------------------------------------------- long documents

def ordinary_text(n_words: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    words = FILLER.split() + ["héllo", "wörld", "日本語", "naïve", "x=1;", "(see", "p.", "12345", "—", "🙂"]
    seps = [" "] * 12 + [", ", ". ", "\n", "\n\n", "  "]
    return "".join(words[rng.integers(len(words))] + seps[rng.integers(len(seps))] for _ in range(n_words))


@pytest.fixture(scope="module")
def tokenizers_under_test():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([ordinary_text(3000, seed=1), TASK * 20], trainers.BpeTrainer(
        vocab_size=600, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<s>", "</s>"],
        show_progress=False))
    bos_eos = Tokenizer.from_str(bpe.to_str())  # a prefix ends in </s> too, which the whole text has last
    bos_eos.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[
        ("<s>", bpe.token_to_id("<s>")), ("</s>", bpe.token_to_id("</s>"))])
    return {"byte": byte_tokenizer(), "passkey": passkey_tokenizer(), "bpe": bpe, "bpe_bos_eos": bos_eos}


@pytest.mark.parametrize("name", ["byte", "passkey", "bpe", "bpe_bos_eos"])
def test_max_tokens_equals_the_whole_texts_prefix(tokenizers_under_test, name):
    from comet_jax.data.jsonl import parse_line, parse_record

    tok = tokenizers_under_test[name]
    # the task line is ~5 characters a token for passkey and bpe (trained on it): the prefix is doubled
    for text in [ordinary_text(1500, seed=seed) for seed in range(3)] + [TASK * 60]:
        full = tok.encode(text).ids
        for m in (1, 7, 100, 513, len(full) - 3, len(full) + 10):
            got = parse_record({"text": text}, "x", tok, min_tokens=0, max_tokens=m)
            assert got.tolist() == full[:m], (text[:20], m)
    assert parse_line('{"input_ids": [5, 6, 7, 8]}', "x", max_tokens=3).tolist() == [5, 6, 7]


class CountingTokenizer:
    """The byte tokenizer, counting the characters it is given."""

    def __init__(self):
        self.tok, self.chars = byte_tokenizer(), 0

    def encode(self, text):
        self.chars += len(text)
        return self.tok.encode(text)


def test_a_5mb_document_tokenises_a_prefix_only():
    from comet_jax.data.jsonl import parse_line

    text = (ordinary_text(4000) * 200)[: 5 * 2 ** 20]
    tok = CountingTokenizer()
    ids = parse_line(json.dumps({"text": text}), "big:1", tok, max_tokens=512)
    assert ids.tolist() == tok.tok.encode(text[:4096]).ids[:512]
    assert tok.chars < 10_000  # not 5 MB


# --------------------------------------------------------------------------- one command per --out

def test_a_second_passkey_run_on_the_same_out_is_refused(ckpt, tmp_path, monkeypatch, capsys):  # noqa: F811
    """Two comet-passkey runs on one --out (other seeds) both said "wrote results.json"; one
    run's results survived. The second, started while the first runs, is refused."""
    import socket
    from types import SimpleNamespace

    from comet_jax.infer import generate

    out, nested = tmp_path / "out", []
    answer = byte_tokenizer().encode(" 12345.").ids

    class Gen:  # answers at once; the first call starts the second run on the same --out
        def __init__(self, *a, **k):
            pass

        def generate(self, prompts, sampling, batch_size, progress=None):
            if not nested:
                nested.append(None)
                capsys.readouterr()  # the first run's own lines
                rc = passkey.main(["--checkpoint", str(ckpt), "--out", str(out), "--seed", "1"] + PASSKEY_ARGS)
                nested[0] = (rc, capsys.readouterr().err)
            return SimpleNamespace(tokens=[answer for _ in prompts])

    monkeypatch.setattr(generate, "Generator", Gen)
    assert passkey.main(["--checkpoint", str(ckpt), "--out", str(out)] + PASSKEY_ARGS) == 0
    rc, err = nested[0]
    line = one_error_line(err)
    assert rc == 2 and "wrote" not in err, err
    assert f"--out {out} is in use by comet-passkey, pid {os.getpid()} on {socket.gethostname()}" in line
    assert json.loads((out / "results.json").read_text())["seed"] == 0
    assert sorted(p.name for p in out.iterdir()) == ["heatmap.png", "results.json"]  # the lock went with its run


@pytest.mark.parametrize("command", ["forgetting", "tasks", "quickstart", "demo"])
def test_every_command_with_out_refuses_a_held_out(command, tmp_path, monkeypatch, capsys):
    import importlib

    def no_load(*a, **k):
        raise AssertionError("the model was loaded though --out is held")

    monkeypatch.setattr(checkpoint, "load_params", no_load)
    module = {"forgetting": "comet_jax.evals.forgetting", "tasks": "comet_jax.evals.tasks",
              "quickstart": "comet_jax.demo.quickstart", "demo": "comet_jax.demo.passkey_demo"}[command]
    out, ck, data = tmp_path / "out", str(tmp_path / "ckpt"), tmp_path / "tasks.jsonl"
    data.write_text(json.dumps({"prompt": "x", "answers": ["y"]}) + "\n")
    argv = {"forgetting": ["--checkpoint", ck, "--quiet"], "tasks": ["--checkpoint", ck, "--data", str(data)],
            "quickstart": [], "demo": ["--work", str(tmp_path / "work"), "--models", "comet"]}[command]
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    from comet_jax.train.run_lock import OutLock

    with OutLock(out, "comet-passkey"):
        rc = importlib.import_module(module).main(argv + ["--out", str(out)])
        line = one_error_line(capsys.readouterr().err)
        assert rc == 2 and f"--out {out} is in use by comet-passkey, pid {os.getpid()}" in line
        assert sorted(p.name for p in out.iterdir()) == [".lock", "notes.txt"]
    assert (out / "notes.txt").read_text() == "mine" and not (tmp_path / "work").exists()


# --------------------------------------------------------------------------- a training run as --checkpoint

def test_a_training_run_dir_as_checkpoint_names_its_model(tmp_path, capsys):
    from comet_jax.evals import forgetting, generate, tasks

    run = tmp_path / "run"
    (run / "checkpoints" / "4").mkdir(parents=True)
    (run / "config.yaml").write_text("run: {}\n")
    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n')
    common = ["--checkpoint", str(run)]
    commands = [(passkey.main, common + PASSKEY_ARGS + ["--out", str(tmp_path / "o1")]),
                (forgetting.main, common + ["--quiet", "--out", str(tmp_path / "o2")]),
                (tasks.main, common + ["--data", str(data), "--quiet", "--out", str(tmp_path / "o3")]),
                (eval_loss.main, common + ["--data", str(data)]),
                (generate.main, common + ["--prompts", str(data)])]
    for main, argv in commands:
        assert main(argv) == 2, argv
        assert one_error_line(capsys.readouterr().err) == (
            f"error: {run} is a training run: use {run / 'model'} (the final model, written when the run ends) or "
            f"export a step with comet-export {run} OUT --step N (then comet-convert OUT CKPT)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.jsonl", "run"]  # no --out made


# --------------------------------------------------------------------------- replacing a symlinked output

def test_replacing_a_symlinked_output_leaves_no_old_link(tmp_path):
    target = tmp_path / "real"
    target.mkdir()
    (target / "x").write_text("old")
    dst = tmp_path / "out"
    dst.symlink_to(target)
    with checkpoint.atomic_dir(dst, overwrite=True) as tmp:
        (tmp / "y").write_text("new")
    assert (dst / "y").read_text() == "new" and (target / "x").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "real"]
    # a symlink a killed writer set aside is removed as a link; what it pointed to stays
    import socket

    stale = tmp_path / f".out.old-999999999@{socket.gethostname()}"
    stale.symlink_to(target)
    assert checkpoint.remove_stale_temporaries(dst) == [stale]
    assert not stale.is_symlink() and (target / "x").read_text() == "old"
