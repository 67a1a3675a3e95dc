"""Mistakes and faults that must not cost a training run its checkpoints: resuming with other
settings, checkpoints with wrong content, none readable, a non-finite state, a full disk, two
trainers on one run dir, a missing data file, a NaN right after a resume, starting over in a
used run dir, non-finite settings."""

from __future__ import annotations

import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from comet_jax.config import ConfigError
from comet_jax.train.run_lock import RunDirLocked, RunLock
from comet_jax.train.train_checkpoint import (CheckpointMismatch, CheckpointSaveError, NoReadableCheckpoint,
                                        NonFiniteState, TrainCheckpointer, abstract_like)
from test_train import ROOT, env, losses, run, train_cmd

IDENTITY = {"model.hidden_size": 4}


def state(value: float = 1.0, width: int = 4) -> dict:
    rng = np.random.default_rng(int(value * 100))
    return {"params": {"w": jnp.asarray(rng.standard_normal((4, width)), jnp.float32) * value},
            "step": jnp.asarray(int(value), jnp.int32)}


def saved_dir(tmp_path: Path, steps=(2, 4)) -> TrainCheckpointer:
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    for s in steps:
        ckpt.save(s, state(s), b"data", {"identity": IDENTITY, "config": {"optim.clip_norm": 1.0}}, force=True)
    return ckpt


def tree_listing(path: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(path)), p.stat().st_size) for p in path.rglob("*") if p.is_file())


# ------------------------------------------------------------------ checkpointer (in-process)

def test_other_settings_or_shapes_are_refused_and_nothing_is_moved(tmp_path):
    ckpt = saved_dir(tmp_path)
    before = tree_listing(tmp_path)
    with pytest.raises(CheckpointMismatch, match=r"model\.hidden_size: 4 in the checkpoint, 6 now.*Nothing was"):
        ckpt.restore_latest(abstract_like(state(1.0)), identity={"model.hidden_size": 6})
    with pytest.raises(CheckpointMismatch, match=r"\['params'\]\['w'\]: float32\[4, 4\] in the checkpoint, "
                                                 r"float32\[4, 6\] now.*optim\.clip_norm: 1\.0 in the checkpoint"):
        ckpt.restore_latest(abstract_like(state(1.0, width=6)), identity=IDENTITY, config={"optim.clip_norm": 0.0})
    assert tree_listing(tmp_path) == before  # nothing moved aside, nothing deleted
    step, restored, data, _ = ckpt.restore_latest(abstract_like(state(1.0)), identity=IDENTITY)
    assert step == 4 and data == b"data"
    np.testing.assert_array_equal(np.asarray(restored["params"]["w"]), np.asarray(state(4)["params"]["w"]))
    ckpt.close()


def wrong_content(ckpt_dir: Path, step: int, source: int) -> None:
    """Step `step` gets step `source`'s state files: valid files, same sizes, other numbers
    (what a storage fault that the file format cannot notice looks like)."""
    shutil.rmtree(ckpt_dir / str(step) / "state")
    shutil.copytree(ckpt_dir / str(source) / "state", ckpt_dir / str(step) / "state")


def test_wrong_content_is_caught_by_the_digest_and_moved_aside_under_a_new_name(tmp_path):
    ckpt = saved_dir(tmp_path)
    wrong_content(ckpt.directory, 4, 2)
    logs = []
    step, restored, _, _ = ckpt.restore_latest(abstract_like(state(1.0)), identity=IDENTITY, log=logs.append)
    assert step == 2 and "arrays differ from what was saved" in logs[0]
    aside = tmp_path / "corrupt_checkpoints"
    assert sorted(p.name for p in aside.iterdir()) == ["4"]
    # the same step goes bad again: the first copy moved aside is kept, the second gets a new name
    ckpt.save(4, state(4), b"data", {"identity": IDENTITY}, force=True)
    wrong_content(ckpt.directory, 4, 2)
    assert ckpt.restore_latest(abstract_like(state(1.0)), identity=IDENTITY, log=logs.append)[0] == 2
    assert sorted(p.name for p in aside.iterdir()) == ["4", "4.1"]
    ckpt.close()


def test_no_readable_checkpoint_stops_unless_restart_is_asked(tmp_path):
    ckpt = saved_dir(tmp_path)
    for s in (2, 4):
        for f in (ckpt.directory / str(s) / "state").rglob("*"):
            if f.is_file():
                f.write_bytes(b"\0" * f.stat().st_size)
    with pytest.raises(NoReadableCheckpoint, match="restart_if_unreadable=true"):
        ckpt.restore_latest(abstract_like(state(1.0)), identity=IDENTITY, log=lambda m: None)
    assert ckpt.steps() == [] and sorted(p.name for p in (tmp_path / "corrupt_checkpoints").iterdir()) == ["2", "4"]
    assert ckpt.restore_latest(abstract_like(state(1.0)), restart_if_unreadable=True) is None
    ckpt.close()


def test_a_non_finite_state_is_never_saved(tmp_path):
    ckpt = saved_dir(tmp_path, steps=(2,))
    bad = state(3)
    bad["params"]["w"] = bad["params"]["w"].at[0, 0].set(jnp.nan)
    with pytest.raises(NonFiniteState, match=r"step 3 holds NaN/Inf.*newest checkpoint is step 2"):
        ckpt.save(3, bad, b"data", {}, force=True)
    assert ckpt.steps() == [2]
    ckpt.close()


@pytest.mark.parametrize("async_save", [False, True])
def test_a_failed_save_is_one_error_naming_step_path_and_last_good(tmp_path, async_save):
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", async_save=async_save)
    ckpt.save(2, state(2, width=4096), b"data", {}, force=True)
    ckpt.wait()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, hard))  # writes past 32 kB fail: EFBIG
    try:
        with pytest.raises(CheckpointSaveError) as info:
            ckpt.save(4, state(4, width=4096), b"data", {}, force=True)
            ckpt.wait()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    msg = str(info.value)
    assert "\n" not in msg and "step 4" in msg and str(ckpt.directory / "4") in msg
    assert "File too large" in msg and "last good checkpoint is step 2" in msg
    assert ckpt.steps() == [2] and not (ckpt.directory / "4").exists()
    ckpt.close(raise_errors=False)
    # what the failed save wrote is a temporary directory, gone at the latest on the next start
    again = TrainCheckpointer(tmp_path / "checkpoints", async_save=async_save)
    assert again.steps() == [2] and not list(again.directory.glob("4*"))
    again.close()


def test_after_a_failed_save_a_dropped_coroutine_prints_nothing(tmp_path):
    # Orbax's writes queued for its closed event loop are dropped at exit; their warnings
    # must not follow the one-line error (seen as the last stderr line of a full-disk run)
    async def leftover():
        pass

    def dropped() -> list[str]:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            leftover()
            gc.collect()
        return [str(w.message) for w in seen if "never awaited" in str(w.message)]

    assert dropped()  # before any failure Python warns
    ckpt = TrainCheckpointer(tmp_path / "checkpoints", async_save=False)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 << 10, hard))
    try:
        with warnings.catch_warnings():  # the filter the failure installs stays inside this test
            with pytest.raises(CheckpointSaveError):
                ckpt.save(4, state(4, width=4096), b"data", {}, force=True)
            with warnings.catch_warnings(record=True) as seen:
                leftover()
                gc.collect()
            assert not [w for w in seen if "never awaited" in str(w.message)]
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    ckpt.close(raise_errors=False)


def test_a_fresh_checkpointer_never_lists_an_unfinished_save(tmp_path):
    # Orbax removes such directories in a background thread; one this large is not gone in time
    # unless the checkpointer waits for it
    TrainCheckpointer(tmp_path / "checkpoints").close()
    tmp = tmp_path / "checkpoints" / "4.orbax-checkpoint-tmp"
    for i in range(50):
        (tmp / f"d{i}").mkdir(parents=True)
        for j in range(40):
            (tmp / f"d{i}" / f"f{j}").write_bytes(b"x")
    again = TrainCheckpointer(tmp_path / "checkpoints")
    assert not list(again.directory.glob("4*"))
    again.close()


# ------------------------------------------------------------------ run lock

def test_run_lock_excludes_a_second_trainer_and_dies_with_its_holder(tmp_path):
    first = RunLock(tmp_path).acquire()
    with pytest.raises(RunDirLocked, match=rf"in use by another trainer, pid {os.getpid()}"):
        RunLock(tmp_path).acquire()
    first.release()
    RunLock(tmp_path).acquire().release()
    # a holder killed without releasing (os._exit) leaves the file but not the lock
    code = f"from comet_jax.train.run_lock import RunLock; import os; RunLock({str(tmp_path)!r}).acquire(); os._exit(9)"
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env()).returncode == 9
    assert json.loads((tmp_path / ".lock").read_text())["pid"] != os.getpid()
    RunLock(tmp_path).acquire().release()


def test_run_lock_without_flock_uses_pid_and_host(tmp_path, monkeypatch):
    import errno
    import fcntl
    import socket

    def no_flock(fd, op):
        raise OSError(errno.ENOLCK, "no locks")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    pid_file = tmp_path / ".lock.pid"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    pid_file.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "since": 0}))
    lock = RunLock(tmp_path).acquire()  # stale: that process is gone
    with pytest.raises(RunDirLocked, match=rf"pid {os.getpid()}.*delete"):
        RunLock(tmp_path).acquire()
    lock.release()
    assert not pid_file.exists()


# ------------------------------------------------------------------ config

def test_non_finite_settings_and_missing_files_are_config_errors(tmp_path):
    from comet_jax.train.train_config import load_config
    from comet_jax.train.train_config_checks import validate, validate_paths

    for bad in ("optim.lr=inf", "optim.lr=.nan", "model.rope_theta=-.inf"):
        with pytest.raises(ConfigError, match="must be a finite number"):
            validate(load_config(None, [bad]))
    with pytest.raises(ConfigError, match=r"data\.path: .*nope\.jsonl does not exist"):
        validate_paths(load_config(None, ["data.source=jsonl", f"data.path={tmp_path / 'nope.jsonl'}"]))
    with pytest.raises(ConfigError, match=r"model\.init: .* is not a converted checkpoint"):
        validate_paths(load_config(None, [f"model.init={tmp_path}"]))
    validate_paths(load_config(None, []))


def test_missing_data_file_fails_at_once_and_writes_nothing(tmp_path):
    t0 = time.time()
    proc = subprocess.run(train_cmd(tmp_path / "run", "data.source=jsonl", f"data.path={tmp_path / 'nope.jsonl'}"),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "data.path" in proc.stderr and "skip_bad" not in proc.stderr
    assert not (tmp_path / "run").exists() and time.time() - t0 < 10


# ------------------------------------------------------------------ python -m train

@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run of 4 steps with checkpoints at 2 and 4; tests work on copies."""
    path = tmp_path_factory.mktemp("trained") / "run"
    run(path, "train.steps=4", "checkpoint.every=2")
    return path


def copy_of(trained: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


def test_resume_with_another_model_size_is_refused_and_keeps_every_checkpoint(trained, tmp_path):
    path = copy_of(trained, tmp_path)
    before, config = tree_listing(path / "checkpoints"), (path / "config.yaml").read_bytes()
    proc = run(path, "train.steps=6", "checkpoint.every=2", "model.hidden_size=48", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    assert "model.hidden_size: 32 in the checkpoint, 48 now" in proc.stderr
    assert tree_listing(path / "checkpoints") == before and not (path / "corrupt_checkpoints").exists()
    assert (path / "config.yaml").read_bytes() == config  # "Nothing was changed": this file neither


def test_resume_with_another_seq_len_is_one_line_and_changes_nothing(trained, tmp_path):
    path = copy_of(trained, tmp_path)
    before, config = tree_listing(path), (path / "config.yaml").read_bytes()
    proc = run(path, "train.steps=6", "checkpoint.every=2", "data.seq_len=384", check=False)
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
    err = proc.stderr.strip()
    assert "data.seq_len is 384" in err and "data.seq_len=320" in err and "run.dir" in err, err
    assert "Nothing was changed" in err and "Traceback" not in err, err
    assert tree_listing(path) == before  # config.yaml, metrics, checkpoints: all as they were
    assert (path / "config.yaml").read_bytes() == config


def test_resume_after_a_crash_names_changed_settings_and_writes_each_step_once(trained, tmp_path):
    # the run logged steps 1..4 but (as after kill -9 or a full disk) its newest checkpoint is 2
    path = copy_of(trained, tmp_path)
    shutil.rmtree(path / "checkpoints" / "4")
    proc = run(path, "train.steps=4", "checkpoint.every=2", "optim.lr=0.001", "train.log_every=10")
    assert "resumed from" in proc.stderr and "at step 2" in proc.stderr, proc.stderr[-3000:]
    changed = [line for line in proc.stderr.splitlines() if "changed settings" in line]
    assert changed == ["resuming with changed settings: optim.lr 0.003 -> 0.001, train.log_every 1 -> 10"], changed
    steps = [json.loads(line)["step"] for line in (path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], steps


def test_nan_right_after_a_resume_names_the_checkpoint_and_the_one_before(trained, tmp_path):
    path = copy_of(trained, tmp_path)
    proc = run(path, "train.steps=12", "checkpoint.every=1", "optim.lr=1e30", "optim.warmup_steps=0", check=False)
    assert proc.returncode == 3, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "after resuming from step 4" in err and "resume from step 2" in err, err
    for step in (int(p.name) for p in (path / "checkpoints").iterdir() if p.name.isdigit()):
        assert step >= 2  # only finite states were saved, and they are all kept


def test_a_full_disk_is_one_line_and_the_last_good_checkpoint_survives(trained, tmp_path):
    path = copy_of(trained, tmp_path)

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (48 << 10, resource.RLIM_INFINITY))

    proc = subprocess.run(train_cmd(path, "train.steps=8", "checkpoint.every=2", "checkpoint.async_save=true"),
                          cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600, preexec_fn=small_files)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.splitlines()) < 12, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert err.startswith("error: saving checkpoint step 6") and "last good checkpoint is step 4" in err, err
    assert sorted(p.name for p in (path / "checkpoints").iterdir()) == ["2", "4"]


def test_unreadable_checkpoints_restart_only_when_asked_with_a_new_metrics_file(trained, tmp_path):
    path = copy_of(trained, tmp_path)
    for f in (path / "checkpoints").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(b"\0" * f.stat().st_size)
    proc = run(path, "train.steps=2", "checkpoint.restart_if_unreadable=true", "checkpoint.every=100")
    assert "moved to" in proc.stderr and "metrics were moved to" in proc.stderr
    assert sorted(losses(path)) == [1, 2] and (path / "metrics.1.jsonl").is_file()
    assert sorted(json.loads(line)["step"] for line in (path / "metrics.1.jsonl").read_text().splitlines()) == [
        1, 2, 3, 4]


def test_two_trainers_on_one_run_dir(tmp_path):
    first = subprocess.Popen(train_cmd(tmp_path, "train.steps=500", "checkpoint.every=1000"), cwd=ROOT, env=env(),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (tmp_path / "metrics.jsonl").exists():
            time.sleep(0.1)
        assert first.poll() is None, "the first trainer ended too early"
        proc = run(tmp_path, "train.steps=500", check=False)
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr[-3000:]
        assert f"in use by another trainer, pid {first.pid}" in proc.stderr
    finally:
        first.kill()
        first.wait()


# ------------------------------------------------------------------ data

def test_a_long_document_is_tokenised_only_as_far_as_seq_len_needs(tmp_path):
    """The training pipeline passes seq_len on, so the JSONL reader tokenises a prefix only."""
    from comet_jax.data.byte_tokenizer import byte_tokenizer
    from comet_jax.data.pipeline import make_source
    from test_faults_eval import CountingTokenizer

    text = "lorem ipsum dolor sit amet " * 200_000  # 5.4 MB
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"text": text}) + "\n")
    tok = CountingTokenizer()
    src = make_source({"source": "jsonl", "path": str(path), "seq_len": 512}, tok)
    ids = src[0]["input_ids"]
    assert list(ids) == byte_tokenizer().encode(text[:2000]).ids[:512]
    assert tok.chars < 20 * 512, tok.chars  # not the whole document


def test_comet_token_ids_in_training_data_are_bad_records(tmp_path):
    from comet_jax.data.pipeline import DataError, make_source

    path = tmp_path / "d.jsonl"
    path.write_text('{"input_ids": [1, 2, 3]}\n{"input_ids": [1, 300, 3]}\n')
    src = make_source({"source": "jsonl", "path": str(path), "seq_len": 8, "reserved": {300: "placeholder"}})
    assert list(src[0]["input_ids"]) == [1, 2, 3]
    with pytest.raises(DataError, match=rf"{path}:2: token id 300 is the CoMeT placeholder"):
        src[1]
