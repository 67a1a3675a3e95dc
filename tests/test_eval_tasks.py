"""eval.tasks: SQuAD normalisation, EM/F1/ROUGE-L, the synthetic task file, a tiny end-to-end
run in both modes, and refused input."""

import json

import jax
import pytest

from comet_jax import checkpoint
from comet_jax.config import ModelConfig
from comet_jax.convert.hf_import import added_tokens, comet_for_vocab, padded_vocab
from comet_jax.data.byte_tokenizer import BYTE_VOCAB
from comet_jax.evals import metrics
from comet_jax.evals.tasks import answer_text, build_prompt, main
from comet_jax.model.init import init_params
from eval import make_tasks

COMET = comet_for_vocab(BYTE_VOCAB, 32, 2, 8, 4)
MODEL = ModelConfig(vocab_size=padded_vocab(BYTE_VOCAB + added_tokens(COMET)),
                    num_real_tokens=BYTE_VOCAB + added_tokens(COMET), hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16)


def test_normalisation_em_f1():
    assert metrics.normalize_answer("  The Cat, sat on  a mat! ") == "cat sat on mat"
    assert metrics.exact_match("an Apple.", "apple") == 1.0 and metrics.exact_match("apples", "apple") == 0.0
    assert metrics.f1("the red apple", "apple pie") == pytest.approx(0.5)  # p 1/2, r 1/2
    assert metrics.f1("x b b c", "b b d") == pytest.approx(2 * (2 / 4) * (2 / 3) / (2 / 4 + 2 / 3))
    assert metrics.f1("the", "a") == 1.0 and metrics.f1("the", "x") == 0.0  # both empty after normalisation
    assert metrics.score("Paris", ["London", "paris."]) == {"em": 1.0, "f1": 1.0, "rouge_l": 1.0}


def test_rouge_l_by_hand():
    # LCS of "police killed the gunman" and "police kill the gunman" is police/the/gunman: 3 of 4 each
    assert metrics.rouge_l("police killed the gunman", "police kill the gunman") == pytest.approx(0.75)
    # "the gunman police killed": LCS 2 (the gunman) -> p = r = 2/4
    assert metrics.rouge_l("the gunman police killed", "police kill the gunman") == pytest.approx(0.5)
    # p = 2/3, r = 2/5
    assert metrics.rouge_l("A-b c", "a x b y z") == pytest.approx(2 * (2 / 3) * (2 / 5) / (2 / 3 + 2 / 5))
    assert metrics.rouge_l("", "a") == 0.0 and metrics.lcs_length(list("abcbdab"), list("bdcaba")) == 4


def test_make_tasks_is_seeded_and_answerable(tmp_path):
    a = make_tasks.make_items(3, 50, 3, seed=1)
    assert a == make_tasks.make_items(3, 50, 3, seed=1) and a != make_tasks.make_items(3, 50, 3, seed=2)
    for it in a:
        key = it["question"].split()[-1].rstrip("?")
        assert f"The value of key {key} is {it['answers'][0]}." in it["context"]
        assert it["context"].count("The value of key") == 3
    assert build_prompt(a[0]).endswith("\n\nQuestion: " + a[0]["question"] + "\nAnswer:")
    assert build_prompt({"prompt": "p", "answers": ["x"]}) == "p"
    assert make_tasks.main(["--out", str(tmp_path / "t.jsonl"), "--items", "2", "--words", "10"]) == 0
    assert len((tmp_path / "t.jsonl").read_text().splitlines()) == 2
    assert make_tasks.main(["--out", str(tmp_path / "no" / "t.jsonl")]) == 2


def test_answer_text_stops_at_newline_and_stop_ids():
    from comet_jax.data.byte_tokenizer import byte_tokenizer

    tok = byte_tokenizer()
    ids = list(b" blue\nmore")
    assert answer_text(ids, tok, set()) == "blue"
    assert answer_text(ids, tok, {ord("u")}) == "bl"
    assert answer_text(ids + [BYTE_VOCAB], tok, set()) == "blue"  # CoMeT ids are not text


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    checkpoint.save(root / "ckpt", init_params(MODEL, COMET, jax.random.key(0)), MODEL, COMET)
    data = root / "tasks.jsonl"
    make_tasks.main(["--out", str(data), "--items", "3", "--words", "30", "--needles", "2"])
    return root, data


@pytest.mark.parametrize("mode", ["comet", "full"])
def test_end_to_end(setup, tmp_path, mode, capsys):
    root, data = setup
    out = tmp_path / "out"
    rc = main(["--checkpoint", str(root / "ckpt"), "--data", str(data), "--tokenizer", "byte", "--mode", mode,
               "--max-new-tokens", "3", "--batch-size", "2", "--metric", "rouge_l", "--out", str(out), "--quiet"])
    assert rc == 0
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == [0, 1, 2]
    for r in rows:
        assert set(r) >= {"prediction", "answers", "em", "f1", "rouge_l", "prompt_tokens"}
        assert r["prompt_tokens"] > 100  # several chunks of 32
    res = json.loads((out / "results.json").read_text())
    assert res["complete"] and res["items"] == 3 and res["score"] == res["rouge_l"]
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metric"] == "rouge_l"
    assert main(["--checkpoint", str(root / "ckpt"), "--data", str(data), "--tokenizer", "byte",
                 "--out", str(out)]) == 2  # an earlier run is never overwritten
    assert "exists" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ('{"context": "c", "answers": ["a"]}', "'question'"),
    ('{"context": "c", "question": "q"}', "'answers'"),
    ('{"context": "c", "question": "q", "answers": []}', "non-empty list"),
    ('{"prompt": "p", "answers": [""]}', "non-empty string"),
    ('{"prompt": "p", "answers": "a"}', "non-empty list"),
    ('{"prompt": 3, "answers": ["a"]}', "'prompt'"),
    ("[1]", "not a JSON object"),
    ('{"prompt": "p"', "invalid JSON"),
    ("", "empty line"),
])
def test_bad_items(setup, tmp_path, capsys, line, message):
    root, _ = setup
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p", "answers": ["a"]}\n' + line + "\n")
    out = tmp_path / "o"
    assert main(["--checkpoint", str(root / "ckpt"), "--data", str(data), "--tokenizer", "byte",
                 "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{data}:2:" in err and message in err
    assert not out.exists()


def test_bad_args(setup, tmp_path, capsys):
    root, data = setup
    out = tmp_path / "o"
    base = ["--checkpoint", str(root / "ckpt"), "--data", str(data), "--out", str(out)]
    for extra, message in ((["--max-new-tokens", "0"], "--max-new-tokens"), ([], "--tokenizer"),
                           (["--tokenizer", "byte", "--stop", "99999"], "--stop")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert not out.exists()
    data2 = ["--checkpoint", str(root / "ckpt"), "--tokenizer", "byte"]
    assert main(data2 + ["--data", str(tmp_path / "missing.jsonl"), "--out", str(out)]) == 2
    assert "cannot read" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(data2 + ["--data", str(data), "--out", str(tmp_path / "file" / "o")]) == 2
    assert "--out" in capsys.readouterr().err
    assert not out.exists()


def test_shims_exit_2_on_bad_input(tmp_path):
    import subprocess
    import sys

    for argv in (["-m", "eval.tasks", "--checkpoint", "x", "--data", "y", "--max-new-tokens", "0"],
                 ["-m", "eval.forgetting", "--checkpoint", "x", "--lengths", "3"]):
        proc = subprocess.run([sys.executable, *argv, "--out", str(tmp_path / "o")], capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
