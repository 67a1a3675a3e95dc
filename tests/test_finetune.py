"""Fine-tune your model, as docs/guide/finetune.md tells a user: a (tiny, random) Llama written
by transformers is converted, fine-tuned with configs/finetune.yaml on a mixture of two JSONL
sources (one with masked labels) with validation, interrupted and resumed, exported, and the
export loaded by transformers gives the logits of the fine-tuned backbone."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import torch
import transformers

import hf_models
from comet_jax import checkpoint
from comet_jax.model import backbone
from test_export_roundtrip import add_tokenizer
from test_train import ROOT, env

# configs/finetune.yaml at a size a CPU test affords; everything else as the file says
SMALL = ["model.dtype=float32", "comet.chunk_size=16", "comet.global_size=2", "comet.stride=4", "comet.budget=8",
         "data.seq_len=64", "eval.every=2", "eval.batches=1", "train.steps=4", "train.batch_size=2",
         "train.log_every=1", "optim.warmup_steps=1", "checkpoint.every=2", "checkpoint.async_save=false",
         "logging.tensorboard=false"]


def command(*args: str, module: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def documents(path, rng, n, masked=False):
    """n documents of 20..60 tokens; `masked`: question answering, only the last 8 tokens scored."""
    with open(path, "w") as f:
        for _ in range(n):
            ids = rng.integers(3, 100, int(rng.integers(20, 61))).tolist()
            rec = {"input_ids": ids}
            if masked:
                rec["labels"] = [-100] * (len(ids) - 8) + ids[-8:]
            f.write(json.dumps(rec) + "\n")


def records(run_dir):
    return [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_convert_finetune_resume_export_load_in_transformers(tmp_path):
    hf = hf_models.build(hf_models.llama_config())
    src = hf_models.save(hf, tmp_path / "llama")
    add_tokenizer(src, 100)
    ckpt = tmp_path / "ckpt"
    command(str(src), str(ckpt), "--chunk-size", "16", "--global-size", "2", "--stride", "4", "--budget", "8",
            "--quiet", module="comet_jax.convert")

    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    documents(data / "books-1.jsonl", rng, 6)
    documents(data / "books-2.jsonl", rng, 6)
    documents(data / "qa.jsonl", rng, 4, masked=True)
    documents(data / "held_out.jsonl", rng, 2)
    run_dir = tmp_path / "run"
    train = ["--config", "configs/finetune.yaml", f"run.dir={run_dir}", f"model.init={ckpt}",
             f"data.mixture=[{{path: '{data}/books-*.jsonl', weight: 3}}, {{path: '{data}/qa.jsonl', weight: 1}}]",
             f"eval.path={data / 'held_out.jsonl'}", *SMALL]
    first = command(*train, module="train")
    evals = {r["step"]: r["eval_loss"] for r in records(run_dir) if "eval_loss" in r}
    assert sorted(evals) == [2, 4] and all(np.isfinite(v) for v in evals.values())
    assert "first chunk" in first.stderr + first.stdout

    # interrupted after step 2: the same command resumes there and logs the same numbers
    final = {r["step"]: r["loss"] for r in records(run_dir)}
    shutil.rmtree(run_dir / "checkpoints" / "4")
    shutil.rmtree(run_dir / "model")
    again = command(*train, module="train")
    assert "resum" in again.stderr + again.stdout
    assert {r["step"]: r["eval_loss"] for r in records(run_dir) if "eval_loss" in r} == evals
    assert {r["step"]: r["loss"] for r in records(run_dir)} == final

    out = tmp_path / "hf_out"
    command(str(run_dir), str(out), "--quiet", module="comet_jax.export")
    tuned, model, _, _ = checkpoint.load(run_dir / "model")
    converted = checkpoint.load_params(ckpt)
    assert not np.allclose(np.asarray(tuned["layers"]["wq"]), np.asarray(converted["layers"]["wq"]))

    loaded = transformers.AutoModelForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    assert type(loaded).__name__ == "LlamaForCausalLM"
    tokens = rng.integers(3, 100, (1, 24))
    want = np.asarray(backbone.full_logits(tuned, tokens, np.array([24]), model))[..., :model.num_real_tokens]
    got = hf_models.hf_logits(loaded, tokens)[..., :model.num_real_tokens]
    np.testing.assert_allclose(got, want, atol=2e-4, rtol=2e-4)
