"""XLA flags of the test run, for this process (conftest.py) and for the subprocesses a test
starts with its own device count.

Backend optimisation level 0: the test models are tiny, so compiling is most of their time,
and LLVM's optimisations take a third of the CPU of a compile-heavy test (test_comet.py:
83 s -> 56 s). They do not change what is computed (no fast-math: no reassociation), and
XLA's own graph passes, which decide fusion and layout, still run."""

import os

TEST_FLAGS = "--xla_backend_optimization_level=0"


def xla_flags(devices: int, base: str | None = None) -> str:
    """The user's XLA_FLAGS (`base`, default the environment's as this module was first
    imported), the test flags and `devices` fake CPU devices."""
    base = _USER_FLAGS if base is None else base
    return " ".join(f for f in (base, TEST_FLAGS, f"--xla_force_host_platform_device_count={devices}") if f)


# read once, before conftest.py adds to it
_USER_FLAGS = os.environ.get("COMET_JAX_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", "")).strip()
os.environ.setdefault("COMET_JAX_USER_XLA_FLAGS", _USER_FLAGS)
