"""eval.loss: per-sequence and mean losses equal transformers'; bad input is named."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import hf_models
from comet_jax.convert.hf_import import convert
from comet_jax.evals import loss as eval_loss


@pytest.fixture(scope="module", params=["llama", "qwen3"])
def setup(request, tmp_path_factory):
    cfg = {"llama": hf_models.llama_config, "qwen3": hf_models.qwen3_config}[request.param]()
    hf = hf_models.build(cfg)
    root = tmp_path_factory.mktemp(request.param)
    src = hf_models.save(hf, root / "src")
    # no CoMeT tokens: the converted model then computes exactly the source model's numbers
    convert(src, root / "ckpt", chunk_size=16, global_size=0, stride=-1, log=lambda m: None)
    rng = np.random.default_rng(0)
    seqs = [rng.integers(0, cfg.vocab_size, n).tolist() for n in (40, 17, 2, 33, 9)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
    return hf, root, seqs, data


def hf_sequence_loss(hf, seq):
    with torch.no_grad():
        out = hf(torch.tensor([seq]), labels=torch.tensor([seq]))
    return float(out.loss)


def test_cli_matches_transformers(setup):
    hf, root, seqs, data = setup
    proc = subprocess.run([sys.executable, "-m", "eval.loss", "--checkpoint", str(root / "ckpt"), "--data",
                           str(data), "--batch-size", "2"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    ref = [hf_sequence_loss(hf, s) for s in seqs]
    got = [p["loss"] for p in out["per_sequence"]]
    assert [p["n_tokens"] for p in out["per_sequence"]] == [len(s) - 1 for s in seqs]
    np.testing.assert_allclose(got, ref, rtol=1e-5)
    n = np.array([len(s) - 1 for s in seqs])
    assert out["n_tokens"] == n.sum()
    np.testing.assert_allclose(out["loss"], (np.array(ref) * n).sum() / n.sum(), rtol=1e-5)


def test_text_records_use_the_checkpoint_tokenizer(setup, tmp_path, capsys):
    from tokenizers import Tokenizer, models, pre_tokenizers

    hf, root, seqs, _ = setup
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(50)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(root / "ckpt" / "tokenizer.json"))
    try:
        data = tmp_path / "t.jsonl"
        data.write_text(json.dumps({"text": "w5 w9 w13 w2 w40"}) + "\n")
        assert eval_loss.main(["--checkpoint", str(root / "ckpt"), "--data", str(data)]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        np.testing.assert_allclose(out["loss"], hf_sequence_loss(hf, [5, 9, 13, 2, 40]), rtol=1e-5)
    finally:
        (root / "ckpt" / "tokenizer.json").unlink()


@pytest.mark.parametrize("line, message", [
    ('{"input_ids": [1, 2, 100000]}', "token id 100000 is outside the vocabulary"),
    ('{"input_ids": [1, -2, 3]}', "token id -2 is outside"),
    ("", "empty line"),
    ('{"input_ids": [1, 2', "invalid JSON"),
    ('{"text": "hello"}', "no tokenizer"),
    ('{"ids": [1, 2]}', "needs an 'input_ids' or a 'text'"),
    ('{"input_ids": [3]}', "at least 2"),
])
def test_bad_lines_are_named(setup, tmp_path, capsys, line, message):
    _, root, _, _ = setup
    data = tmp_path / "bad.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n' + line + "\n")
    assert eval_loss.main(["--checkpoint", str(root / "ckpt"), "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert f"{data}:2:" in err and message in err


def test_bad_checkpoint_and_args(tmp_path, capsys):
    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3]}\n')
    assert eval_loss.main(["--checkpoint", str(tmp_path), "--data", str(data)]) == 2
    assert "not a comet-jax checkpoint" in capsys.readouterr().err
    assert eval_loss.main(["--checkpoint", str(tmp_path), "--data", str(data), "--batch-size", "0"]) == 2
    with pytest.raises(SystemExit):
        eval_loss.main(["--checkpoint", str(tmp_path), "--data", str(data), "--mode", "nope"])


@pytest.fixture(scope="module")
def comet_ckpt(tmp_path_factory):
    hf = hf_models.build(hf_models.qwen3_config())
    root = tmp_path_factory.mktemp("comet")
    src = hf_models.save(hf, root / "src")
    convert(src, root / "ckpt", chunk_size=8, global_size=2, stride=3, budget=4, log=lambda m: None)
    convert(src, root / "plain", chunk_size=64, global_size=0, stride=-1, log=lambda m: None)
    rng = np.random.default_rng(1)
    seqs = [rng.integers(0, 120, n).tolist() for n in (30, 9, 21)]
    data = root / "data.jsonl"
    data.write_text("".join(json.dumps({"input_ids": s}) + "\n" for s in seqs))
    return root, seqs, data


def run_main(capsys, *argv):
    assert eval_loss.main(list(argv)) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_comet_mode_equals_reference(comet_ckpt, capsys):
    from comet_jax import checkpoint
    from comet_jax.chunking import fixed
    from reference_comet import reference_per_token_losses
    from test_comet_reference import ref_cfgs

    root, seqs, data = comet_ckpt
    out = run_main(capsys, "--checkpoint", str(root / "ckpt"), "--data", str(data), "--mode", "comet",
                   "--batch-size", "2")
    params, model, comet, _ = checkpoint.load(root / "ckpt")
    cfg, ccfg = ref_cfgs(model, comet)
    for s, got in zip(seqs, out["per_sequence"]):
        ref = np.asarray(reference_per_token_losses(params, cfg, ccfg, s, fixed(len(s), 8)))
        assert got["n_tokens"] == len(s) - 1
        np.testing.assert_allclose(got["loss"], ref.sum() / (len(s) - 1), rtol=1e-5)
    # overrides: a different chunk size and stride give different numbers, validated first
    other = run_main(capsys, "--checkpoint", str(root / "ckpt"), "--data", str(data), "--mode", "comet",
                     "--chunk-size", "5", "--stride", "2", "--budget", "6")
    assert abs(other["loss"] - out["loss"]) > 1e-4
    assert eval_loss.main(["--checkpoint", str(root / "ckpt"), "--data", str(data), "--mode", "comet",
                           "--stride", "0"]) == 2
    assert "comet.stride" in capsys.readouterr().err


def test_comet_mode_without_memory_in_one_chunk_equals_full(comet_ckpt, capsys):
    root, _, data = comet_ckpt
    full = run_main(capsys, "--checkpoint", str(root / "plain"), "--data", str(data), "--mode", "full")
    comet = run_main(capsys, "--checkpoint", str(root / "plain"), "--data", str(data), "--mode", "comet")
    np.testing.assert_allclose([p["loss"] for p in comet["per_sequence"]],
                               [p["loss"] for p in full["per_sequence"]], rtol=1e-5)


def test_position_buckets_by_hand():
    from comet_jax.infer.scoring import position_buckets

    results = [(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 2, 3, 4])), (np.array([10.0, 20.0]), np.array([1, 5]))]
    got = position_buckets(results, [2, 4])
    assert got == [{"from": 0, "to": 2, "n_tokens": 2, "loss": 5.5},  # positions 1, 1: (1 + 10) / 2
                   {"from": 2, "to": 4, "n_tokens": 2, "loss": 2.5},  # 2, 3
                   {"from": 4, "to": None, "n_tokens": 2, "loss": 12.0}]  # 4, 5
    assert position_buckets(results, [100])[1] == {"from": 100, "to": None, "n_tokens": 0, "loss": None}


@pytest.mark.parametrize("mode", ["comet", "full"])
def test_by_position_buckets_add_up_to_the_loss(comet_ckpt, capsys, tmp_path, mode):
    root, seqs, data = comet_ckpt
    out = run_main(capsys, "--checkpoint", str(root / "ckpt"), "--data", str(data), "--mode", mode,
                   "--by-position", "8,16", "--plot", str(tmp_path / "pos.png"))
    buckets = out["by_position"]
    assert [b["n_tokens"] for b in buckets] == [sum(min(len(s), hi) - lo for s in seqs if len(s) > lo)
                                                for lo, hi in ((1, 8), (8, 16), (16, 10 ** 9))]
    total = sum(b["loss"] * b["n_tokens"] for b in buckets)
    assert total == pytest.approx(out["loss"] * out["n_tokens"], rel=1e-9)
    assert (tmp_path / "pos.png").stat().st_size > 1000
    assert eval_loss.main(["--checkpoint", str(root / "ckpt"), "--data", str(data), "--by-position", "16,8"]) == 2
    assert "increasing" in capsys.readouterr().err


def test_loss_mask_scores_only_the_marked_tokens(comet_ckpt, capsys, tmp_path):
    from comet_jax import checkpoint
    from comet_jax.infer.scoring import token_losses_batch

    root, seqs, _ = comet_ckpt
    masks = [[int(k % 4 == 3) for k in range(len(s))] for s in seqs]
    masks[1] = None  # a line without a mask is scored whole
    data = tmp_path / "masked.jsonl"
    data.write_text("".join(json.dumps({"input_ids": s, **({"loss_mask": m} if m else {})}) + "\n"
                            for s, m in zip(seqs, masks)))
    out = run_main(capsys, "--checkpoint", str(root / "ckpt"), "--data", str(data), "--mode", "comet",
                   "--by-position", "8")
    params, model, comet, _ = checkpoint.load(root / "ckpt")
    full = token_losses_batch(params, [np.asarray(s, np.int32) for s in seqs], 4, model, comet, "comet")
    want = [x if m is None else x[np.asarray(m, bool)[p]] for (x, p), m in zip(full, masks)]
    assert [p["n_tokens"] for p in out["per_sequence"]] == [len(w) for w in want]
    np.testing.assert_allclose([p["loss"] for p in out["per_sequence"]], [w.mean() for w in want], rtol=1e-5)
    assert sum(b["n_tokens"] for b in out["by_position"]) == sum(len(w) for w in want)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"input_ids": seqs[0], "loss_mask": [1, 0]}) + "\n")
    assert eval_loss.main(["--checkpoint", str(root / "ckpt"), "--data", str(bad)]) == 2
    assert f"bad.jsonl:1: loss_mask has 2 entries, input_ids {len(seqs[0])}" in capsys.readouterr().err
    none = tmp_path / "none.jsonl"
    none.write_text(json.dumps({"input_ids": seqs[0], "loss_mask": [1] + [0] * (len(seqs[0]) - 1)}) + "\n")
    assert eval_loss.main(["--checkpoint", str(root / "ckpt"), "--data", str(none)]) == 2
    assert "mark no token" in capsys.readouterr().err
