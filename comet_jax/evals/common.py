"""What the evaluation commands share: token lengths with k/M suffixes (parse and print),
checking an output directory before the work, holding it for the run (one command per
--out), refusing a training run directory as --checkpoint, and writing a file atomically (temp
file, then rename). The memory probes live in comet_jax/resources.py."""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Callable

EXIT_USAGE = 2


def add_model_options(ap, dtype_default: str | None = None) -> None:
    """--dtype, --chunk-size and --attention, which every evaluation command takes (dtype
    default None: the checkpoint's)."""
    from comet_jax.config import ATTENTION_HELP, ATTENTIONS

    which = dtype_default or "the checkpoint's"
    ap.add_argument("--dtype", choices=("float32", "bfloat16"), default=dtype_default,
                    help=f"compute dtype (default: {which})")
    ap.add_argument("--chunk-size", type=int, help="comet mode: override the checkpoint's chunk size")
    ap.add_argument("--attention", choices=ATTENTIONS, default="auto", help=ATTENTION_HELP)


def parse_length(text: str) -> int:
    """'8k' -> 8192, '1M' -> 1048576, '512' -> 512 (k = 1024, M = 1024*1024). ValueError if bad."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)\s*", text)
    if not m:
        raise ValueError(f"bad length {text!r}: use a positive integer with an optional k (x1024) or "
                         "M (x1024*1024) suffix")
    n = int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 ** 2}[m.group(2).lower()]
    if n < 1:
        raise ValueError(f"bad length {text!r}: must be >= 1 token")
    return n


def format_length(n: int) -> str:
    """1048576 -> '1M', 65536 -> '64k', 300 -> '300'."""
    if n % 1024 ** 2 == 0:
        return f"{n // 1024 ** 2}M"
    if n % 1024 == 0:
        return f"{n // 1024}k"
    return str(n)


def check_out_dir(path: str | os.PathLike, option: str = "--out") -> Path:
    """`path` as a Path if it is a directory that exists, or could be created, and can be
    written; else ValueError (one line). Creates nothing: a command checks this before hours of
    work, and may still fail before it writes anything."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{option} {path} exists and is not a directory")
    probe = path.absolute()
    while not probe.exists():  # the nearest existing ancestor is where a directory would be made
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"{option} {path}: {probe} is not a directory")
    what = "is not writable" if probe == path.absolute() else f"cannot be created ({probe} is not writable)"
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"{option} {path} {what}")
    try:  # os.access says yes to root everywhere, even on a read-only file system or in /proc
        fd, name = tempfile.mkstemp(prefix=".write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise ValueError(f"{option} {path} {what}: {e.strerror}") from None
    return path


def hold_out_dir(path: str | os.PathLike, body: Callable[[], int], command: str, option: str = "--out") -> int:
    """Run `body` (a command's work; returns its exit code) holding the output directory
    `path`: one command per --out at a time. A directory another live process holds (a
    command, or a trainer: the lock is the run dir's, comet_jax/train/run_lock.py) is refused
    with one line naming it and its holder, exit 2, nothing written. The lock is released when
    `body` returns or raises; a directory made only for the lock is removed if nothing was
    written into it. A lock its holder did not release (killed) is taken over."""
    from comet_jax.train.run_lock import OutDirLocked, OutLock

    try:
        check_out_dir(path, option)
        lock = OutLock(path, command, option).acquire()
    except (ValueError, OutDirLocked) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except OSError as e:
        print(f"error: {option} {path}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return body()
    finally:
        lock.release()


def check_not_a_run_dir(path: str | os.PathLike) -> None:
    """CheckpointError (one line) when `path` is a training run directory (config.yaml and
    checkpoints/, no comet_jax.json) rather than a checkpoint: the commands read RUN_DIR/model."""
    from comet_jax.checkpoint import META_FILE, CheckpointError

    d = Path(path)
    if (d / "config.yaml").is_file() and (d / "checkpoints").is_dir() and not (d / META_FILE).exists():
        model = d / "model"
        final = "the final model" if (model / META_FILE).is_file() else "the final model, written when the run ends"
        raise CheckpointError(f"{d} is a training run: use {model} ({final}) or export a step with "
                              f"comet-export {d} OUT --step N (then comet-convert OUT CKPT)")


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to a temporary sibling of `path`, then rename it into place (a failed
    write leaves `path` as it was and no temporary file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # on disk before the rename: a crash leaves the old file or the new one
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save_png(fig, path: Path) -> None:
    """Render a matplotlib figure to PNG (110 dpi), write it atomically, close the figure."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
