"""python -m train end to end: runs, resumes bit for bit after kill -9, falls back from a
corrupt checkpoint, stops on NaN, and gives the same numbers on 1 and 8 devices."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from xla_env import xla_flags

ROOT = Path(__file__).resolve().parents[1]
# A model small enough to compile and step in seconds; passkey prompts need >= ~250 byte tokens.
TINY = ["model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=2", "model.num_heads=2",
        "model.num_kv_heads=1", "model.head_dim=16", "comet.chunk_size=64", "comet.global_size=4",
        "comet.stride=8", "comet.budget=8", "data.seq_len=320", "train.batch_size=4", "train.log_every=1",
        "optim.warmup_steps=2", "checkpoint.async_save=false", "logging.tensorboard=false", "data.curriculum=[]"]


def env(devices: int = 1) -> dict[str, str]:
    e = dict(os.environ)
    e["XLA_FLAGS"] = xla_flags(devices)
    e["JAX_PLATFORMS"] = "cpu"
    e["PYTHONPATH"] = str(ROOT)
    return e


def train_cmd(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "train", *TINY, f"run.dir={run_dir}", *extra]


def run(run_dir: Path, *extra: str, devices: int = 1, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(train_cmd(run_dir, *extra), cwd=ROOT, env=env(devices), capture_output=True, text=True,
                          timeout=600)
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def losses(run_dir: Path) -> dict[int, float]:
    """The loss of each step, the last record winning (a resumed run repeats steps)."""
    out = {}
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out[rec["step"]] = rec["loss"]
    return out


def test_config_errors_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "optim.lrr=1"], cwd=ROOT, env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "optim.lrr" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "train", "mesh.data=2"], cwd=ROOT, env=env(), capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "mesh" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "train", "--print-config", "optim.lr=0.5"], cwd=ROOT, env=env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0 and "lr: 0.5" in proc.stdout


def test_kill_9_and_resume_is_bit_exact(tmp_path):
    steps = ["train.steps=8", "checkpoint.every=2"]
    run(tmp_path / "straight", *steps)
    reference = losses(tmp_path / "straight")
    assert sorted(reference) == list(range(1, 9))

    killed = tmp_path / "killed"
    proc = subprocess.Popen(train_cmd(killed, *steps), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while time.time() < deadline:
        metrics = killed / "metrics.jsonl"
        if metrics.exists() and len(metrics.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(losses(killed)) < 8, "the run finished before it could be killed"
    resumed = run(killed, *steps)
    assert "resumed from" in resumed.stderr
    got = losses(killed)
    assert sorted(got) == list(range(1, 9))
    assert got == reference  # bit for bit: floats compared exactly


def test_corrupt_checkpoint_falls_back_to_the_previous_one(tmp_path):
    run(tmp_path, "train.steps=4", "checkpoint.every=2")
    newest = tmp_path / "checkpoints" / "4"
    assert newest.is_dir()
    for f in (newest / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0:
            f.write_bytes(b"garbage")
    proc = run(tmp_path, "train.steps=6", "checkpoint.every=2")
    assert "checkpoint at step 4 cannot be used" in proc.stderr
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr
    assert (tmp_path / "corrupt_checkpoints" / "4" / "state").is_dir()


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    proc = run(tmp_path, "train.steps=30", "checkpoint.every=1", "optim.lr=1e30", "optim.clip_norm=0",
               "optim.warmup_steps=0", check=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert any(m in proc.stderr for m in ("loss is nan", "loss is inf", "norm is nan", "norm is inf", "NaN/Inf"))
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps, "the last good checkpoint must stay"


def test_loss_falls(tmp_path):
    run(tmp_path, "train.steps=30", "optim.lr=3e-3", "checkpoint.every=100")
    got = losses(tmp_path)
    first, last = np.mean([got[i] for i in range(1, 4)]), np.mean([got[i] for i in range(28, 31)])
    assert last < 0.8 * first, (first, last)


def test_curriculum_stage_sets_chunk_size_and_min_len(tmp_path):
    """A stage's chunk_size / passkey.min_len are used for that stage (its steps equal a run
    configured with them throughout) and the run goes back to the comet section's after it."""
    a = run(tmp_path / "staged", "train.steps=3", "checkpoint.every=100",
            "data.curriculum=[{until_step: 2, seq_len: 320, chunk_size: 128, passkey: {min_len: 300}}]")
    run(tmp_path / "plain", "train.steps=2", "checkpoint.every=100", "comet.chunk_size=128",
        "data.passkey.min_len=300")
    assert "chunks of 128" in a.stderr and "chunks of 64" in a.stderr
    staged, plain = losses(tmp_path / "staged"), losses(tmp_path / "plain")
    assert [staged[1], staged[2]] == [plain[1], plain[2]]
    assert sorted(staged) == [1, 2, 3]


def test_one_and_eight_devices_agree(tmp_path):
    steps = ["train.steps=3", "checkpoint.every=100", "train.batch_size=8", "model.num_kv_heads=2"]
    run(tmp_path / "one", *steps, devices=1)
    run(tmp_path / "eight", *steps, "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2", devices=8)
    a, b = losses(tmp_path / "one"), losses(tmp_path / "eight")
    np.testing.assert_allclose([b[i] for i in (1, 2, 3)], [a[i] for i in (1, 2, 3)], rtol=1e-5)
    import jax
    import orbax.checkpoint as ocp

    pa = ocp.StandardCheckpointer().restore(tmp_path / "one" / "checkpoints" / "3" / "state")
    pb = ocp.StandardCheckpointer().restore(tmp_path / "eight" / "checkpoints" / "3" / "state")
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6),
                 pa["params"], pb["params"])


def test_two_processes_agree_on_the_loss(tmp_path):
    """Two CPU processes joined by jax.distributed on 127.0.0.1, one device each, a mesh
    data=2 over both: each reads its own half of the data; the step is one global step."""
    import re
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(train_cmd(tmp_path, "train.steps=2", "mesh.data=2", "checkpoint.every=100",
                                        f"distributed.coordinator=127.0.0.1:{port}", "distributed.num_processes=2",
                                        f"distributed.process_id={i}"),
                              cwd=ROOT, env=env(1), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(2)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0, out[-3000:]
    finals = [re.search(r"done: .*'loss': ([0-9.e+-]+)", out).group(1) for out in outs]
    assert finals[0] == finals[1]
    assert sorted(losses(tmp_path)) == [1, 2]  # process 0 writes the metrics


def test_sigterm_saves_then_exits_and_resume_on_another_mesh(tmp_path):
    steps = ["train.steps=40", "checkpoint.every=100", "model.num_kv_heads=2", "train.batch_size=8"]
    proc = subprocess.Popen(train_cmd(tmp_path, *steps), cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while time.time() < deadline:
        m = tmp_path / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=300)[1]
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert saved and saved[-1] >= 3 and "received signal" in err
    # the same run continues on 8 devices with a different mesh
    out = run(tmp_path, *steps[:1], "train.steps=" + str(saved[-1] + 2), *steps[1:], "mesh.data=2", "mesh.fsdp=2",
              "mesh.tensor=2", devices=8)
    assert f"at step {saved[-1]}" in out.stderr
    assert sorted(losses(tmp_path))[-1] == saved[-1] + 2


def test_bad_record_is_named(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"input_ids": [1, 2, 3, 4, 5]}\n{"input_ids": [1, 2, 99999]}\n' * 8)
    proc = run(tmp_path / "r", "data.source=jsonl", f"data.path={data}", "train.steps=2", "data.shuffle=false",
               check=False)
    assert proc.returncode == 2 and f"{data}:2" in proc.stderr, proc.stderr[-2000:]
    proc = run(tmp_path / "r2", "data.source=jsonl", f"data.path={data}", "train.steps=2", "data.skip_bad=true",
               "data.shuffle=false")
    # skipped records are named where they are read and counted in the log and the metrics
    assert f"skipping bad record {data}:2:" in proc.stderr
    assert "bad record(s) skipped" in proc.stderr
    assert json.loads((tmp_path / "r2" / "metrics.jsonl").read_text().splitlines()[-1])["data_bad"] >= 4


def test_shipped_tiny_config_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "train", "--config", "configs/tiny_cpu.yaml", "train.steps=2",
                           f"run.dir={tmp_path}"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MFU" in proc.stderr and (tmp_path / "config.yaml").is_file()
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    rec = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "step_time", "mfu"} <= set(rec)


def test_fine_tune_a_converted_checkpoint(tmp_path):
    """model.init=DIR: a converted HF Llama (with its tokenizer) fine-tuned on JSONL text."""
    import hf_models
    from tokenizers import Tokenizer, models, pre_tokenizers

    from comet_jax.convert.hf_import import convert

    src = hf_models.save(hf_models.build(hf_models.llama_config()), tmp_path / "src")
    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(100)}, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(src / "tokenizer.json"))
    convert(src, tmp_path / "ckpt", chunk_size=16, global_size=2, stride=4, budget=4, log=lambda m: None)
    rng = np.random.default_rng(0)
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps({"text": " ".join(f"w{i}" for i in rng.integers(0, 100, 60))}) + "\n"
                            for _ in range(16)))
    proc = subprocess.run([sys.executable, "-m", "train", f"model.init={tmp_path / 'ckpt'}", "comet.chunk_size=16",
                           "comet.global_size=2", "comet.stride=4", "comet.budget=4", "data.source=jsonl",
                           f"data.path={data}", "data.tokenizer=checkpoint", "data.seq_len=64", "train.steps=3",
                           "train.batch_size=4", f"run.dir={tmp_path / 'run'}", "logging.tensorboard=false",
                           "data.curriculum=[]"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(losses(tmp_path / "run")) == [1, 2, 3]
    # G is baked into the weights: a different one is refused before training
    proc = subprocess.run([sys.executable, "-m", "train", f"model.init={tmp_path / 'ckpt'}", "comet.global_size=3",
                           "data.source=jsonl", f"data.path={data}", "data.tokenizer=checkpoint",
                           "data.seq_len=64", "comet.chunk_size=16", f"run.dir={tmp_path / 'run2'}"], cwd=ROOT,
                          env=env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and "baked into its weights" in proc.stderr


def test_pipeline_stages_match_one_device(tmp_path):
    """data=2 x stage=4 and fsdp=2 x stage=4 (chunk groups on 4 devices) on 8 devices give the
    single-device losses and parameters. stage=4 alone is the same trainer path with data =
    fsdp = 1; the pipeline's own numerics per stage count are in test_pipeline.py."""
    import jax
    import orbax.checkpoint as ocp

    steps = ["train.steps=2", "checkpoint.every=100", "train.batch_size=4"]
    run(tmp_path / "one", *steps, devices=1)
    run(tmp_path / "data2_stage4", *steps, "mesh.stage=4", "mesh.data=2", devices=8)
    run(tmp_path / "fsdp2_stage4", *steps, "mesh.stage=4", "mesh.fsdp=2", devices=8)
    ref = losses(tmp_path / "one")
    p_ref = ocp.StandardCheckpointer().restore(tmp_path / "one" / "checkpoints" / "2" / "state")["params"]
    for name in ("data2_stage4", "fsdp2_stage4"):
        got = losses(tmp_path / name)
        np.testing.assert_allclose([got[1], got[2]], [ref[1], ref[2]], rtol=1e-5)
        p = ocp.StandardCheckpointer().restore(tmp_path / name / "checkpoints" / "2" / "state")["params"]
        jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-6),
                     p_ref, p)


def test_profile_steps_and_compile_cache(tmp_path):
    """logging.profile_steps leaves a jax.profiler trace in RUN_DIR/profile; run.compile_cache
    fills a directory that a second run loads its compiled step from (and says so)."""
    cache = tmp_path / "cache"
    first = run(tmp_path / "a", "train.steps=2", "checkpoint.every=100", "logging.profile_steps=[2, 2]",
                f"run.compile_cache={cache}")
    traces = list((tmp_path / "a" / "profile").rglob("*.xplane.pb"))
    assert traces and traces[0].stat().st_size > 0, first.stdout[-2000:]
    assert "profile of steps 2-2 written to" in first.stdout + first.stderr
    assert any(cache.iterdir())
    second = run(tmp_path / "b", "train.steps=2", "checkpoint.every=100", f"run.compile_cache={cache}")
    line = next(ln for ln in (second.stdout + second.stderr).splitlines() if ln.startswith("compile cache"))
    assert int(line.split(": ")[1].split(" hit")[0]) >= 1, line


def test_validation_loss_every_n_steps_equal_after_resume(tmp_path):
    """eval.every=2 logs eval_loss at steps 2 and 4 (held-out passkey batches, another seed);
    resumed from step 2, the run logs the same validation losses. A JSONL eval.path (read as
    JSONL though the run trains on the passkey task), the chunk losses and a passkey probe too."""
    import shutil

    args = ["train.steps=4", "checkpoint.every=2", "eval.every=2", "eval.batches=1"]
    run(tmp_path / "a", *args)

    def evals(d):
        recs = [json.loads(ln) for ln in (d / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["eval_loss"] for r in recs if r.get("eval_loss") is not None}

    first = evals(tmp_path / "a")
    assert sorted(first) == [2, 4] and all(np.isfinite(v) for v in first.values())
    shutil.rmtree(tmp_path / "a" / "checkpoints" / "4")
    again = run(tmp_path / "a", *args)
    assert "step 4: eval_loss" in again.stdout + again.stderr
    assert evals(tmp_path / "a") == first
    held = tmp_path / "held.jsonl"
    rng = np.random.default_rng(0)
    held.write_text("".join(json.dumps({"input_ids": rng.integers(1, 200, 300).tolist()}) + "\n" for _ in range(4)))
    proc = run(tmp_path / "b", "train.steps=2", "checkpoint.every=100", "eval.every=1", f"eval.path={held}",
               "eval.passkey_lengths=[300]", "eval.passkey_samples=1",
               check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(evals(tmp_path / "b")) == [1, 2]
    rec = [json.loads(ln) for ln in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()][-1]
    assert np.isfinite(rec["eval_loss_first_chunk"]) and np.isfinite(rec["eval_loss_last_chunk"])
    assert 0 <= rec["eval_passkey_300"] <= 1
    assert "first chunk" in proc.stdout + proc.stderr and "passkey@300" in proc.stdout + proc.stderr
