"""Two things a TPU user asks of a training run before anything else: where does the step
time go (`logging.profile_steps`: a `jax.profiler` trace of a few steps in RUN_DIR/profile,
opened with TensorBoard's profile plugin or XProf), and why does every restart compile for
minutes (`run.compile_cache`: JAX's persistent compilation cache in a directory, so a
restart loads the compiled step; the trainer logs the hits)."""

from __future__ import annotations

import os
from typing import Callable

import jax
from jax.experimental.compilation_cache import compilation_cache as cc

CACHE_EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


class CompileCache:
    """Points JAX's persistent compilation cache at `directory` (before the first compile)
    and counts its hits and misses from JAX's monitoring events."""

    def __init__(self, directory: str):
        self.directory = os.path.abspath(directory)
        self.counts = {"hits": 0, "misses": 0}
        os.makedirs(self.directory, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", self.directory)
        cc.reset_cache()  # a cache JAX set up already (another directory) is not consulted again
        # the train step compiles for seconds to minutes; small helper programs are not worth a file
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
        jax.monitoring.register_event_listener(self._event)

    def _event(self, name: str, **_) -> None:
        if name in CACHE_EVENTS:
            self.counts[CACHE_EVENTS[name]] += 1

    def summary(self) -> str:
        return (f"compile cache {self.directory}: {self.counts['hits']} hit(s), {self.counts['misses']} "
                "miss(es)")


class Profiler:
    """Traces optimizer steps start..stop (1-based, inclusive) into `directory`."""

    def __init__(self, directory: str, steps: list[int], log: Callable[[str], None]):
        self.directory, self.log = directory, log
        self.start, self.stop = (steps[0], steps[1]) if steps else (0, -1)
        self.active = False

    def before(self, step: int) -> None:
        """Call before running optimizer step `step` (1-based)."""
        if step == self.start:
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, step: int, outputs) -> None:
        """Call after step `step`, with what it returned (waited for, so the trace holds the step)."""
        if self.active and step >= self.stop:
            jax.block_until_ready(outputs)
            self.close()
            self.log(f"profile of steps {self.start}-{self.stop} written to {self.directory} "
                     f"(tensorboard --logdir {self.directory}, Profile tab)")

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False
