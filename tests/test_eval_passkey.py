"""python -m eval.passkey on a tiny random checkpoint: artefacts, schema, errors."""

import json

import jax
import pytest

from comet_jax import checkpoint
from comet_jax.config import ModelConfig
from comet_jax.convert.hf_import import added_tokens, comet_for_vocab, padded_vocab
from comet_jax.data.byte_tokenizer import BYTE_VOCAB
from comet_jax.model.init import init_params
from comet_jax.evals.passkey import evaluate, first_number, is_correct, is_exact, main, parse_length

COMET = comet_for_vocab(BYTE_VOCAB, 64, 4, 8, 8)
MODEL = ModelConfig(vocab_size=padded_vocab(BYTE_VOCAB + added_tokens(COMET)),
                    num_real_tokens=BYTE_VOCAB + added_tokens(COMET), hidden_size=32, intermediate_size=64,
                    num_layers=2, num_heads=2, num_kv_heads=1, head_dim=16)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt") / "tiny"
    checkpoint.save(d, init_params(MODEL, COMET, jax.random.key(0)), MODEL, COMET)
    return d


def test_parse_length():
    assert parse_length("4k") == 4096 and parse_length("1M") == 2 ** 20 and parse_length("300") == 300
    with pytest.raises(ValueError, match="bad length"):
        parse_length("4x")
    assert first_number(" 01234. The") == "01234" and first_number("none") is None
    assert is_correct(" 012345", "01234") and is_correct(" 01234.", "01234")
    assert not is_correct(" 0123", "01234") and not is_correct(" 1 01234", "01234") and not is_correct("x", "01234")
    assert is_exact(" 01234.", "01234") and is_exact(" 01234", "01234") and is_exact(" 01234 is", "01234")
    assert not is_exact(" 012345", "01234") and not is_exact(" 0123", "01234")


class EchoGenerator:
    """Answers every prompt with its needle's key, followed by a digit on odd rows."""

    def __init__(self, tok):
        self.tok, self.prompts = tok, []

    def generate(self, prompts, sampling, batch_size, progress=None):
        import re
        from types import SimpleNamespace

        texts = [self.tok.decode([int(t) for t in p]) for p in prompts]
        self.prompts += texts
        keys = [re.search(r"pass key is (\d+)\.", t).group(1) for t in texts]
        return SimpleNamespace(tokens=[self.tok.encode(f" {k}{'7' if i % 2 else '.'}").ids
                                       for i, k in enumerate(keys)])


@pytest.mark.parametrize("variant", ["train", "held_out"])
def test_evaluate_scores_exact_and_uses_the_prompt_variant(variant):
    from comet_jax.data.passkey import QUESTION, QUESTION_HELD_OUT
    from comet_jax.data.passkey_tokenizer import passkey_tokenizer

    tok = passkey_tokenizer()
    gen = EchoGenerator(tok)
    (cell,) = evaluate(gen, tok, [300], [0.5], samples=4, seed=0, batch_size=4, variant=variant)
    assert cell["accuracy"] == 1.0 and cell["exact"] == 0.5  # rows 1 and 3 run on past the key
    question = QUESTION if variant == "train" else QUESTION_HELD_OUT
    assert len(gen.prompts) == 4 and all(p.endswith(question) for p in gen.prompts)


def test_jitter_varies_the_prompt_length_and_keeps_the_keys():
    from comet_jax.data.passkey_tokenizer import passkey_tokenizer

    tok = passkey_tokenizer()
    runs = {}
    for jitter in (0, 64):
        gen = EchoGenerator(tok)
        (cell,) = evaluate(gen, tok, [600], [0.5], samples=12, seed=3, batch_size=4, jitter=jitter)
        runs[jitter] = ([len(tok.encode(p).ids) for p in gen.prompts], [c["key"] for c in cell["examples"]])
    (fixed, keys0), (varied, keys64) = runs[0], runs[64]
    assert len(set(fixed)) == 1 and len(set(varied)) >= 3  # several lengths, so several alignments
    assert all(600 - 64 - 40 < n <= 600 for n in varied)  # whole sentences below the drawn length
    assert min(varied) < min(fixed) and keys0 == keys64  # the keys do not depend on the jitter


@pytest.mark.parametrize("mode", ["comet", "full"])
def test_writes_results_and_heatmap(ckpt, tmp_path, mode, capsys):
    out = tmp_path / "out"
    rc = main(["--checkpoint", str(ckpt), "--tokenizer", "byte", "--lengths", "300,1k", "--depths", "0,1",
               "--samples", "3", "--batch-size", "2", "--mode", mode, "--out", str(out), "--quiet"])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert res["mode"] == mode and res["lengths"] == [300, 1024] and res["depths"] == [0.0, 1.0]
    assert res["prompt_variant"] == "train" and set(res["exact_by_length"]) == {"300", "1024"}
    assert len(res["cells"]) == 4
    for c in res["cells"]:
        assert set(c) >= {"length", "depth", "accuracy", "samples", "prompt_tokens", "seconds", "peak_memory_mb"}
        assert c["samples"] == 3 and 0 <= c["accuracy"] <= 1
        assert c["length"] - 40 < c["prompt_tokens"] <= c["length"]  # whole filler sentences
        assert c["peak_memory_mb"] > 0
    assert set(res["accuracy_by_length"]) == {"300", "1024"}
    assert res["complete"] is True and res["settings"]["mode"] == mode  # what --resume checks
    assert res["jitter"] == 0 and res["settings"]["jitter"] == 0
    assert (out / "heatmap.png").stat().st_size > 1000
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["mode"] == mode


def test_errors(ckpt, tmp_path, capsys):
    base = ["--checkpoint", str(ckpt), "--out", str(tmp_path / "o"), "--quiet"]
    assert main(base + ["--tokenizer", "byte", "--lengths", "100"]) == 2  # shorter than task + needle + question
    assert "minimum" in capsys.readouterr().err
    assert main(base) == 2  # no tokenizer in the checkpoint
    assert "--tokenizer" in capsys.readouterr().err
    assert main(base + ["--tokenizer", "nope.json"]) == 2
    assert main(base + ["--tokenizer", "byte", "--lengths", "300", "--jitter", "250"]) == 2
    assert "minus --jitter 250" in capsys.readouterr().err
    for bad in (["--depths", "0,1.5"], ["--lengths", "4q"], ["--samples", "0"], ["--lengths", "300,300"],
                ["--jitter", "-1"]):
        with pytest.raises(SystemExit) as e:
            main(base + ["--tokenizer", "byte"] + bad)
        assert e.value.code == 2
    assert not (tmp_path / "o").exists()  # nothing written on errors
