"""The output-directory lock (comet_jax/train/run_lock.py OutLock): one command per --out,
the holder named, released at exit, a dead holder's lock taken over, the directory left as it
was found; the run-dir lock of the trainer shares the file."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_a_second_holder_is_refused_naming_the_directory_and_the_holder(tmp_path):
    from comet_jax.train.run_lock import OutDirLocked, OutLock

    out = tmp_path / "new" / "out"
    lock = OutLock(out, "comet-passkey").acquire()
    with pytest.raises(OutDirLocked) as e:
        OutLock(out, "comet-tasks").acquire()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--out {out} is in use by comet-passkey, pid {os.getpid()} on "
                                              f"{socket.gethostname()}")
    lock.release()
    assert not (tmp_path / "new").exists()  # made for the lock, nothing written: removed
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("x")
    with OutLock(out, "comet-tasks"):
        pass
    assert [p.name for p in out.iterdir()] == ["mine.txt"]  # no lock file left, nothing else touched


def test_a_killed_holders_lock_is_taken_over(tmp_path):
    code = ("from comet_jax.train.run_lock import OutLock; import os, sys; "
            f"OutLock({str(tmp_path)!r}, 'comet-passkey').acquire(); os._exit(9)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env).returncode == 9
    assert json.loads((tmp_path / ".lock").read_text())["pid"] != os.getpid()  # left behind, not held

    from comet_jax.train.run_lock import OutLock

    OutLock(tmp_path).acquire().release()
    assert not (tmp_path / ".lock").exists()


def test_the_trainer_and_the_commands_share_the_lock(tmp_path):
    from comet_jax.train.run_lock import OutDirLocked, OutLock, RunDirLocked, RunLock

    run = RunLock(tmp_path).acquire()
    with pytest.raises(OutDirLocked, match=rf"--out {tmp_path} is in use by a trainer .*pid {os.getpid()}"):
        OutLock(tmp_path, "comet-forgetting").acquire()
    run.release()
    assert (tmp_path / ".lock").exists()  # a run dir keeps its lock file
    with OutLock(tmp_path, "comet-forgetting"):
        with pytest.raises(RunDirLocked, match=rf"in use by comet-forgetting, pid {os.getpid()}"):
            RunLock(tmp_path).acquire()
