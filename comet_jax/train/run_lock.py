"""One trainer per run directory: an exclusive lock on RUN_DIR/.lock.

Two trainers on one run dir would overwrite each other's checkpoints, config.yaml,
exported model and metrics. The lock is an `flock` on the file, which the kernel releases
when the holder exits in any way (kill -9 included), so a stale lock cannot outlive its
process on a local disk. The file also names its holder (pid, host, start time) for the
message. On file systems without `flock` the file's existence is the lock: a holder on this
host whose pid is gone is stale and taken over; one on another host must be removed by hand.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from comet_jax.resources import pid_alive

LOCK_FILE = ".lock"


class RunDirLocked(RuntimeError):
    """Another live process holds the run directory."""


def _holder_text(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (since {since})"


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self._exclusive_file = False

    def _me(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode()

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict, extra: str = "") -> RunDirLocked:
        return RunDirLocked(f"run dir {self.run_dir} is in use by another trainer, {_holder_text(info)}{extra}; "
                            "wait for it to finish, stop it, or set another run.dir")

    def acquire(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._refuse(self._read()) from None
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            return self._acquire_by_file()
        os.ftruncate(fd, 0)
        os.pwrite(fd, self._me(), 0)
        self._fd = fd
        return self

    def _acquire_by_file(self) -> "RunLock":
        """Without flock: the lock is a file created exclusively next to .lock."""
        path = self.path.with_name(LOCK_FILE + ".pid")
        for _ in range(2):
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                try:
                    info = json.loads(path.read_text() or "{}")
                except (OSError, ValueError):
                    info = {}
                if info.get("host") == socket.gethostname() and not pid_alive(int(info.get("pid", -1))):
                    path.unlink(missing_ok=True)  # stale: its process is gone
                    continue
                raise self._refuse(info, f" (if it is not running, delete {path})") from None
            os.write(fd, self._me())
            os.close(fd)
            self._exclusive_file = True
            return self
        raise self._refuse({})

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._exclusive_file:
            self.path.with_name(LOCK_FILE + ".pid").unlink(missing_ok=True)
            self._exclusive_file = False

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
