"""How much memory this process and its devices use: the one set of probes for training
metrics, the evaluations and the benchmarks. Process figures come from /proc (resource's
lifetime peak where there is none); device figures from the backend, where it reports them."""

from __future__ import annotations

import os
import resource
import sys


def _proc_kb(path: str, field: str) -> int | None:
    """A `field:  N kB` line of a /proc file, in bytes (None where there is no /proc)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _lifetime_peak_bytes() -> int:
    ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return ru if sys.platform == "darwin" else ru * 1024


def rss_bytes() -> int:
    """Resident memory of this process now (without /proc: the lifetime peak)."""
    rss = _proc_kb("/proc/self/status", "VmRSS")
    return _lifetime_peak_bytes() if rss is None else rss


def peak_rss_bytes() -> int:
    """Peak resident memory of this process over its life."""
    peak = _proc_kb("/proc/self/status", "VmHWM")
    return _lifetime_peak_bytes() if peak is None else peak


def mem_available_bytes() -> int | None:
    return _proc_kb("/proc/meminfo", "MemAvailable")


def device_peak_mb(device=None) -> float | None:
    """Peak bytes in use on `device` (default: the first local device) in MB, or None where the
    backend does not report it (CPU)."""
    import jax

    try:
        stats = (device or jax.local_devices()[0]).memory_stats()
    except Exception:  # noqa: BLE001 - some backends do not implement memory_stats
        return None
    peak = (stats or {}).get("peak_bytes_in_use", (stats or {}).get("bytes_in_use"))
    return None if peak is None else peak / 2**20


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists on this host (another user's process counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
