"""eval.generate: greedy continuations equal transformers' own generation (full mode), CoMeT
mode runs both layouts, stop tokens, text, and bad input."""

import json

import numpy as np
import pytest

import hf_models
from comet_jax import checkpoint
from comet_jax.convert.hf_import import convert
from comet_jax.evals import generate as eval_generate
from comet_jax.infer.generate import Generator, Sampling

NEW = 6


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    hf = hf_models.build(hf_models.llama_config(vocab_size=300))
    root = tmp_path_factory.mktemp("gen")
    src = hf_models.save(hf, root / "src")
    convert(src, root / "plain", chunk_size=64, global_size=0, stride=-1, log=lambda m: None)
    convert(src, root / "comet", chunk_size=8, global_size=2, stride=3, budget=4, log=lambda m: None)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, 256, n).tolist() for n in (5, 19, 12)]
    path = root / "prompts.jsonl"
    path.write_text("".join(json.dumps({"input_ids": p}) + "\n" for p in prompts))
    return hf, root, prompts, path


def run(capsys, *argv):
    rc = eval_generate.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, [json.loads(line) for line in out.out.splitlines()], out.err


def test_full_mode_greedy_equals_transformers(setup, capsys):
    hf, root, prompts, path = setup
    rc, lines, err = run(capsys, "--checkpoint", root / "plain", "--prompts", path, "--mode", "full",
                         "--max-new-tokens", NEW, "--batch-size", 2)
    assert rc == 0, err
    assert len(lines) == len(prompts)
    for p, line in zip(prompts, lines):
        # greedy with transformers' forward pass as the oracle (its generate() gives other logits
        # than its forward pass on this tiny model, 4e-3 apart even at the first step)
        seq = list(p)
        for _ in range(NEW):
            seq.append(int(hf_models.hf_logits(hf, [seq])[0, -1].argmax()))
        assert line["tokens"] == seq[len(p):]


def test_comet_mode_both_layouts_and_stop_tokens(setup, capsys):
    _, root, prompts, path = setup
    params, model, comet, _ = checkpoint.load(root / "comet")
    for flag, official in (((), False), (("--official-layout",), True)):
        rc, lines, err = run(capsys, "--checkpoint", root / "comet", "--prompts", path, "--max-new-tokens", NEW, *flag)
        assert rc == 0, err
        want = Generator(params, model, comet, official=official).generate(
            [np.asarray(p) for p in prompts], Sampling(max_new_tokens=NEW)).tokens
        assert [line["tokens"] for line in lines] == [w.tolist() for w in want]
    stop = lines[1]["tokens"][2]
    rc, stopped, _ = run(capsys, "--checkpoint", root / "comet", "--prompts", path, "--max-new-tokens", NEW,
                         "--stop", stop, "--tokenizer", "byte")
    first = lines[1]["tokens"].index(stop)
    assert rc == 0 and stopped[1]["tokens"] == lines[1]["tokens"][: first + 1]
    assert isinstance(stopped[1]["text"], str)


@pytest.mark.parametrize("content, args, message", [
    ("", (), "no prompts"),
    ('{"input_ids": []}\n', (), "0 token(s); at least 1 needed"),
    ('{"text": "hi"}\n', (), "tokenizer"),
    ('{"input_ids": [1, 2]}\n', ("--max-new-tokens", "0"), "--max-new-tokens must be >= 1"),
    ('{"input_ids": [1, 2]}\n', ("--mode", "full", "--official-layout"), "--official-layout needs --mode comet"),
    ('{"input_ids": [1, 2]}\n', ("--stop", "99999"), "--stop 99999"),
])
def test_bad_input_is_one_line(setup, tmp_path, capsys, content, args, message):
    _, root, _, _ = setup
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    rc, lines, err = run(capsys, "--checkpoint", root / "comet", "--prompts", path, *args)
    assert rc == 2 and not lines and message in err and len(err.strip().splitlines()) == 1
