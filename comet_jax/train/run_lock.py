"""One process per directory: an exclusive lock on DIR/.lock.

`RunLock`: one trainer per run directory. Two trainers on one run dir would overwrite each
other's checkpoints, config.yaml, exported model and metrics. `OutLock`: one command per
output directory (`--out` of comet-passkey, comet-forgetting, comet-tasks, comet-demo,
comet-quickstart): two evaluations on one --out would each report success while only the
last one's results survive. A run dir and an --out are the same lock file, so a command
pointed at a directory a trainer holds is refused too.

The lock is an `flock` on the file, which the kernel releases when the holder exits in any way
(kill -9 included), so a stale lock cannot outlive its process on a local disk. The file also
names its holder (command, pid, host, start time) for the message. On file systems without
`flock` the file's existence is the lock: a holder on this host whose pid is gone is stale and
taken over; one on another host must be removed by hand. A run dir keeps its .lock file; an
output directory is left as the command found it: the lock file is removed on release, and
so is the directory if the command created it and wrote nothing into it.
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


class DirLocked(RuntimeError):
    """Another live process holds the directory."""


class RunDirLocked(DirLocked):
    """Another live process holds the run directory."""


class OutDirLocked(DirLocked):
    """Another live process holds the output directory."""


def _holder_text(info: dict) -> str:
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("since", 0)))
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (since {since})"


class DirLock:
    """The lock of `directory` (made if missing). Subclasses say who holds it and what to do."""

    command = "?"
    tidy = False  # remove the lock file, and the directory if this lock made it and it is empty

    def __init__(self, directory: str | os.PathLike, command: str | None = None):
        self.run_dir = Path(directory)
        self.path = self.run_dir / LOCK_FILE
        self.command = command or self.command
        self._fd: int | None = None
        self._exclusive_file = False
        self._made: list[Path] = []

    def _me(self) -> bytes:
        return json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                           "command": self.command}).encode()

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def _refuse(self, info: dict, extra: str = "") -> DirLocked:
        raise NotImplementedError

    def _mkdir(self) -> None:
        missing = []
        p = self.run_dir.absolute()
        while not p.exists() and p != p.parent:
            missing.append(p)
            p = p.parent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._made = missing  # deepest first

    def acquire(self) -> "DirLock":
        self._mkdir()
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._undo_mkdir()
                raise self._refuse(self._read()) from None
            except OSError as e:
                os.close(fd)
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    raise
                return self._acquire_by_file()
            # a holder that removed the file on release (tidy) may have done so after we opened
            # it: then we hold a lock on a file no one else will open; take the one at the path
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, self._me(), 0)
                self._fd = fd
                return self
            os.close(fd)
        raise self._refuse(self._read())

    def _acquire_by_file(self) -> "DirLock":
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

    def _undo_mkdir(self) -> None:
        for p in self._made:  # deepest first; stops at the first that is not empty
            try:
                p.rmdir()
            except OSError:
                break
        self._made = []

    def release(self) -> None:
        if self._fd is not None:
            if self.tidy:
                self.path.unlink(missing_ok=True)  # while still holding it: see acquire
            else:
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None
        if self._exclusive_file:
            if self.tidy:
                self.path.unlink(missing_ok=True)
            self.path.with_name(LOCK_FILE + ".pid").unlink(missing_ok=True)
            self._exclusive_file = False
        if self.tidy:
            self._undo_mkdir()

    def __enter__(self) -> "DirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class RunLock(DirLock):
    """One trainer per run directory (RUN_DIR/.lock, kept after release)."""

    command = "comet-train"

    def _refuse(self, info: dict, extra: str = "") -> RunDirLocked:
        who = "another trainer" if info.get("command", "comet-train") == "comet-train" else info["command"]
        return RunDirLocked(f"run dir {self.run_dir} is in use by {who}, {_holder_text(info)}{extra}; "
                            "wait for it to finish, stop it, or set another run.dir")


class OutLock(DirLock):
    """One command per output directory; OutDirLocked names the directory and its holder."""

    tidy = True

    def __init__(self, directory: str | os.PathLike, command: str | None = None, option: str = "--out"):
        super().__init__(directory, command)
        self.option = option

    def _refuse(self, info: dict, extra: str = "") -> OutDirLocked:
        who = info.get("command") or "another command"
        if who == "comet-train":
            who = "a trainer (it is a training run directory)"
        return OutDirLocked(f"{self.option} {self.run_dir} is in use by {who}, {_holder_text(info)}{extra}; "
                            f"wait for it to finish, stop it, or use another {self.option}")
