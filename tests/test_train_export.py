"""A finished `python -m train` run exports RUN_DIR/model: an inference checkpoint (params
equal to the last training checkpoint's, the configs, a "train" record) with its tokenizer."""

from __future__ import annotations

import subprocess
import sys

import json
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from test_train import ROOT, env

from comet_jax import checkpoint
from comet_jax.convert.tokenizer_files import comet_token_names
from comet_jax.data.passkey import build_prompt
from comet_jax.data.passkey_tokenizer import passkey_tokenizer
from comet_jax.io.tokenizer import load_tokenizer

# Smaller than test_train.TINY: with the passkey tokenizer a prompt fits in 96 tokens.
SMALL = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=2",
         "model.num_kv_heads=1", "model.head_dim=16", "comet.chunk_size=32", "comet.global_size=4",
         "comet.stride=8", "comet.budget=8", "data.seq_len=96", "data.tokenizer=passkey", "train.batch_size=2",
         "train.steps=2", "optim.warmup_steps=1", "checkpoint.async_save=false", "checkpoint.every=100",
         "logging.tensorboard=false", "data.curriculum=[]"]


def train(run_dir, *extra, devices=1):
    proc = subprocess.run([sys.executable, "-m", "train", *SMALL, f"run.dir={run_dir}", *extra], cwd=ROOT,
                          env=env(devices), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One finished run, shared: fsdp=2 on two devices, so its arrays are stored in shards."""
    run_dir = tmp_path_factory.mktemp("train_export")
    return run_dir, train(run_dir, "mesh.fsdp=2", devices=2)


def test_finished_run_exports_an_inference_checkpoint(run):
    tmp_path, proc = run
    model_dir = tmp_path / "model"
    assert f"exported inference checkpoint to {model_dir}" in proc.stderr
    assert {"comet_jax.json", "params", "tokenizer.json"} <= {p.name for p in model_dir.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".model")]  # no temporaries left

    params, model, comet, meta = checkpoint.load(model_dir)
    assert meta["train"] == {"seq_len": 96, "mode": "comet", "steps": 2, "tokenizer": "passkey"}
    assert meta["tokenizer"] == "tokenizer.json" and comet.chunk_size == 32 and comet.global_size == 4
    state = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "2" / "state")
    assert jax.tree.structure(params) == jax.tree.structure(state["params"])
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, state["params"])
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(params))  # param_dtype

    tok = load_tokenizer(model_dir, meta)
    ids, answer, _ = build_prompt(tok, 300, 0.5, "12345")
    ref, ref_answer, _ = build_prompt(passkey_tokenizer(), 300, 0.5, "12345")
    assert ids.tolist() == ref.tolist() and answer.tolist() == ref_answer.tolist()
    for token_id, name in comet_token_names(comet).items():  # CoMeT tokens at their ids, as the converter does
        assert tok.token_to_id(name) == token_id
    assert tok.get_vocab_size() == model.num_real_tokens <= model.vocab_size


def test_with_optim_ema_the_export_is_the_moving_average(tmp_path):
    out, tmp_path = tmp_path, tmp_path / "run"
    train(tmp_path, "optim.ema=0.5", "mesh.fsdp=2", devices=2)  # parameters split over a 2-device fsdp mesh
    params, _, _, meta = checkpoint.load(tmp_path / "model")
    assert meta["train"]["ema"] == 0.5
    state = ocp.StandardCheckpointer().restore(tmp_path / "checkpoints" / "2" / "state")
    ema = state["opt_state"][-1]["ema"]  # the chain: clipping, the Adams' multi_transform, the average
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), params, ema)
    assert not np.array_equal(np.asarray(params["layers"]["wq"]), np.asarray(state["params"]["layers"]["wq"]))
    # comet-export RUN_DIR gives the same average (its digests checked), --raw the step's parameters
    from comet_jax.convert.hf_import import convert
    from comet_jax.export.write import export

    for raw, want in ((False, ema), (True, state["params"])):
        hf, back = out / f"hf_{raw}", out / f"back_{raw}"
        summary = export(tmp_path, hf, raw=raw, log=lambda m: None)
        assert summary["source"].endswith("step 2" if raw else "step 2 (the weight average, optim.ema)")
        convert(hf, back, log=lambda m: None)
        got, want_flat = checkpoint.flatten(checkpoint.load(back)[0]), checkpoint.flatten(want)
        assert got.keys() == want_flat.keys()
        for path, a in want_flat.items():  # the rows past the real tokens are padding, drawn anew by the converter
            a, b = np.asarray(a), np.asarray(got[path])
            if path in ("embed", "lm_head"):
                a, b = (a[:305], b[:305]) if path == "embed" else (a[:, :305], b[:, :305])
            np.testing.assert_array_equal(b, a, err_msg=f"{path} raw={raw}")


# Full mode exports too: tests/test_demo.py trains and evaluates a full-attention model from its export.


def test_run_directory_exports_to_hf_and_converts_back(run, tmp_path):
    """`python -m comet_jax.export RUN_DIR DST`: the newest checkpoint, as HF (native: a Llama
    with memory), which the converter takes back to the same parameters."""
    from comet_jax.convert.hf_import import convert
    from comet_jax.export.write import export

    run_dir, _ = run
    summary = export(run_dir, tmp_path / "hf", log=lambda m: None)
    assert summary["source"] == f"run {run_dir}, step 2" and summary["layout"] == "native"
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["pad_token_id"] == 0 and cfg["rope_theta"] == cfg["rope_parameters"]["rope_theta"] == 10000.0
    assert cfg["max_position_embeddings"] == 131072 and cfg["bos_token_id"] is None  # from scratch: the defaults
    import transformers

    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    _, comet, _ = checkpoint.read_meta(run_dir / "model")
    for token_id, name in comet_token_names(comet).items():
        assert hf_tok.convert_tokens_to_ids(name) == token_id

    convert(tmp_path / "hf", tmp_path / "back", log=lambda m: None)
    back, model, comet_back, _ = checkpoint.load(tmp_path / "back")
    assert comet_back == comet and model.num_real_tokens == 305  # passkey tokenizer + 6 CoMeT tokens
    state = ocp.StandardCheckpointer().restore(run_dir / "checkpoints" / "2" / "state")
    trained, back = checkpoint.flatten(state["params"]), checkpoint.flatten(back)
    assert trained.keys() == back.keys()
    for path in trained:
        a, b = np.asarray(trained[path]), np.asarray(back[path])
        if path == "embed":  # the rows past the real ones are padding, drawn anew by the converter
            a, b = a[:305], b[:305]
        if path == "lm_head":
            a, b = a[:, :305], b[:, :305]
        np.testing.assert_array_equal(b, a, err_msg=path)


def test_run_directory_refusals(run, tmp_path, capsys):
    from comet_jax.export.__main__ import main

    run_dir, _ = run
    assert main([str(run_dir), str(tmp_path / "hf"), "--quiet", "--step", "7"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: --step 7 is not a checkpoint in {run_dir / 'checkpoints'} (steps: 2)"]
    # a checkpoint whose arrays do not match the digest the trainer recorded is not exported
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("model", ".lock"))
    meta_file = copy / "checkpoints" / "2" / "meta" / "metadata"
    meta = json.loads(meta_file.read_text())
    meta["digest"]["['params']['layers']['wq']"][1] += 1
    meta_file.write_text(json.dumps(meta))
    assert main([str(copy), str(tmp_path / "hf"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "parameter layers.wq differs from what was saved" in err[0], err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_export_digest_is_the_trainers(dtype):
    """The export recomputes the trainer's digest from slabs along any axis, in pieces."""
    import jax.numpy as jnp
    import ml_dtypes

    from comet_jax.export.leaves import Digest
    from comet_jax.train.train_checkpoint import digest

    x = np.random.default_rng(0).standard_normal((3, 5, 7)).astype(np.dtype(getattr(ml_dtypes, dtype, dtype)))
    want = digest({"params": {"x": jnp.asarray(x)}})[0]["['params']['x']"]
    for axis in range(3):
        d = Digest(x.shape)
        d.ELEMENTS = 4  # several pieces per slab
        for a in range(0, x.shape[axis], 2):
            d.add(x[(slice(None),) * axis + (slice(a, a + 2),)], axis, a)
        assert d.result() == want, axis
