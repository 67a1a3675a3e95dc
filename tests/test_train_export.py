"""A finished `python -m train` run exports RUN_DIR/model: an inference checkpoint (params
equal to the last training checkpoint's, the configs, a "train" record) with its tokenizer."""

from __future__ import annotations

import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
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


def test_finished_run_exports_an_inference_checkpoint(tmp_path):
    # fsdp=2 on two devices: the exported parameters are gathered from shards
    proc = train(tmp_path, "mesh.fsdp=2", devices=2)
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

# Full mode exports too: tests/test_demo.py trains and evaluates a full-attention model from its export.
