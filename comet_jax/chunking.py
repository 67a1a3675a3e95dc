"""Chunk plans: how a sequence of n text tokens is split into chunks of at most C tokens.

A *plan* is a list of Python ints, each in [1, C], summing to n (docs/design.md §1.2 item 2).
Training draws among several planners (`PlannerMix`); evaluation uses `fixed`, optionally
`right_aligned` so that the last chunk is full-size and ends at the sequence end.

Only numpy and the standard library are used here, so plans can be made in data loaders.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from types import MappingProxyType
from typing import Iterable, Mapping, Sequence

import numpy as np

from comet_jax.config import PLANNERS  # the planner names, in canonical order


# --------------------------------------------------------------------------- helpers

def _check_int(value, name: str, minimum: int = 1) -> int:
    """Return `value` as an int, or raise ValueError if it is not an integer >= minimum."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_nc(n, C) -> tuple[int, int]:
    """Validate the sequence length n and maximal chunk size C (both >= 1)."""
    return _check_int(n, "n"), _check_int(C, "C")


def _check_rng(rng, planner: str) -> np.random.Generator:
    """Require a numpy Generator for the random planners (keeps plans reproducible)."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"planner {planner!r} needs a numpy Generator rng "
                         f"(np.random.default_rng(seed)), got {type(rng).__name__}")
    return rng


def _low(min_size, C: int) -> int:
    """Smallest drawable chunk size: min(min_size, C)."""
    return min(_check_int(min_size, "min_size"), C)


def _length(tokens) -> int:
    """Number of tokens in `tokens` (a sequence / 1-D array), or `tokens` itself if an int."""
    if isinstance(tokens, numbers.Integral) and not isinstance(tokens, bool):
        return int(tokens)
    return len(tokens)


# --------------------------------------------------------------------------- planners

def fixed(n: int, C: int) -> list[int]:
    """[C, C, ..., remainder]: full chunks first, a shorter last chunk if n % C != 0."""
    n, C = _check_nc(n, C)
    q, r = divmod(n, C)
    return [C] * q + ([r] if r else [])


def right_aligned(n: int, C: int) -> list[int]:
    """[remainder, C, C, ...]: the last chunk is full-size and ends at the sequence end."""
    n, C = _check_nc(n, C)
    q, r = divmod(n, C)
    return ([r] if r else []) + [C] * q


def uniform(n: int, C: int, rng: np.random.Generator, min_size: int = 4) -> list[int]:
    """Draw one size c uniformly from [min(min_size, C), C], then return fixed(n, c)."""
    n, C = _check_nc(n, C)
    lo = _low(min_size, C)
    c = int(_check_rng(rng, "uniform").integers(lo, C + 1))
    return fixed(n, c)


def random_sizes(n: int, C: int, rng: np.random.Generator, min_size: int = 4) -> list[int]:
    """Each chunk size drawn independently from [min(min_size, C), C]; the last takes the rest.

    Only the last chunk can be shorter than min(min_size, C) (when fewer tokens remain).
    """
    n, C = _check_nc(n, C)
    lo = _low(min_size, C)
    rng = _check_rng(rng, "random")
    # At most ceil(n / lo) draws are needed; draw them at once (vectorised, deterministic).
    sizes = rng.integers(lo, C + 1, size=-(-n // lo))
    ends = np.cumsum(sizes)
    k = int(np.searchsorted(ends, n))  # first chunk whose end reaches n
    plan = [int(s) for s in sizes[:k]]
    plan.append(n - (int(ends[k - 1]) if k else 0))
    return plan


def semantic(tokens: Sequence[int] | np.ndarray, C: int, boundary_ids: Iterable[int]) -> list[int]:
    """Split after boundary tokens (ids in `boundary_ids`, e.g. newline or period).

    Each chunk ends right after the last boundary token within its first C tokens, or at C
    if it has none. Once the remaining tokens fit in one chunk (<= C) they form the last
    chunk whole. Never exceeds C.
    """
    n, C = _check_nc(_length(tokens), C)
    if isinstance(tokens, numbers.Integral):
        raise ValueError("semantic planner needs the token ids, not just a length")
    ids = np.asarray(tokens).reshape(-1)
    bids = np.asarray(sorted({int(b) for b in boundary_ids}), dtype=np.int64)
    bpos = np.flatnonzero(np.isin(ids, bids)) if bids.size else np.zeros(0, np.int64)
    plan, start = [], 0
    while n - start > C:
        end = start + C  # exclusive end of the window
        j = int(np.searchsorted(bpos, end)) - 1  # last boundary position < end
        if j >= 0 and bpos[j] >= start:
            cut = int(bpos[j]) + 1 - start
        else:
            cut = C
        plan.append(cut)
        start += cut
    plan.append(n - start)
    return plan


# --------------------------------------------------------------------------- validation

def validate_plan(plan: Sequence[int], n: int, C: int) -> None:
    """Raise ValueError (with the reason) unless `plan` is ints in [1, C] summing to n."""
    n, C = _check_nc(n, C)
    if isinstance(plan, (str, bytes)) or not isinstance(plan, Sequence):
        raise ValueError(f"plan must be a list of ints, got {type(plan).__name__}")
    if len(plan) == 0:
        raise ValueError(f"plan is empty but n = {n}")
    for i, size in enumerate(plan):
        if isinstance(size, bool) or not isinstance(size, numbers.Integral):
            raise ValueError(f"plan[{i}] = {size!r} is not an integer")
        if not 1 <= size <= C:
            raise ValueError(f"plan[{i}] = {size} is outside [1, C={C}]")
    total = sum(int(s) for s in plan)
    if total != n:
        raise ValueError(f"plan sums to {total}, expected n = {n}")


# --------------------------------------------------------------------------- dispatch

def plan_by_name(name: str, tokens, C: int, rng: np.random.Generator | None = None, *,
                 min_size: int = 4, boundary_ids: Iterable[int] = ()) -> list[int]:
    """Apply the planner called `name` (one of PLANNERS) to `tokens` (ids, or a length n).

    `rng` is needed by "uniform" and "random"; `boundary_ids` by "semantic".
    """
    if name == "semantic":
        return semantic(tokens, C, boundary_ids)
    n = _length(tokens)
    if name == "fixed":
        return fixed(n, C)
    if name == "right_aligned":
        return right_aligned(n, C)
    if name == "uniform":
        return uniform(n, C, rng, min_size)
    if name == "random":
        return random_sizes(n, C, rng, min_size)
    raise ValueError(f"unknown planner {name!r}; expected one of {PLANNERS}")


def _default_weights() -> Mapping[str, float]:
    """Default mixture: fixed-size chunks only."""
    return {"fixed": 1.0}


@dataclasses.dataclass(frozen=True)
class PlannerMix:
    """A weighted mixture of planners; `plan` draws one planner per sequence.

    weights: planner name -> non-negative weight (need not sum to 1; missing names weigh 0).
    min_size: smallest drawn size for "uniform" / "random".
    boundary_ids: token ids after which "semantic" may cut (required if its weight > 0).
    """

    weights: Mapping[str, float] = dataclasses.field(default_factory=_default_weights)
    min_size: int = 4
    boundary_ids: tuple[int, ...] = ()

    def __post_init__(self):
        """Validate the configuration and freeze weights / boundary_ids."""
        if not isinstance(self.weights, Mapping):
            raise ValueError(f"weights must be a mapping planner name -> weight, "
                             f"got {type(self.weights).__name__}")
        clean = {}
        for key, w in self.weights.items():
            if key not in PLANNERS:
                raise ValueError(f"weights: unknown planner {key!r}; expected one of {PLANNERS}")
            if isinstance(w, bool) or not isinstance(w, numbers.Real) or not math.isfinite(w):
                raise ValueError(f"weights[{key!r}] must be a finite number, got {w!r}")
            if w < 0:
                raise ValueError(f"weights[{key!r}] must be >= 0, got {w}")
            clean[key] = float(w)
        if sum(clean.values()) <= 0:
            raise ValueError(f"weights: all planner weights are zero ({dict(self.weights)})")
        try:
            _check_int(self.min_size, "min_size")
        except ValueError as e:
            raise ValueError(f"min_size: {e}") from None
        if isinstance(self.boundary_ids, (str, bytes)):
            raise ValueError(f"boundary_ids must be integer token ids, got {self.boundary_ids!r}")
        bids = tuple(self.boundary_ids)
        for b in bids:
            if isinstance(b, bool) or not isinstance(b, numbers.Integral):
                raise ValueError(f"boundary_ids: {b!r} is not an integer token id")
        if clean.get("semantic", 0.0) > 0 and not bids:
            raise ValueError("weights['semantic'] > 0 but boundary_ids is empty")
        object.__setattr__(self, "weights", MappingProxyType(clean))
        object.__setattr__(self, "min_size", int(self.min_size))
        object.__setattr__(self, "boundary_ids", tuple(int(b) for b in bids))

    def __hash__(self):
        """Hash by value (weights are stored as a read-only mapping)."""
        return hash((tuple(sorted(self.weights.items())), self.min_size, self.boundary_ids))

    def probabilities(self) -> dict[str, float]:
        """Normalised probability of each planner with positive weight, canonical order."""
        total = sum(self.weights.values())
        return {k: self.weights[k] / total for k in PLANNERS if self.weights.get(k, 0.0) > 0}

    def choose(self, rng: np.random.Generator) -> str:
        """Draw one planner name according to the weights."""
        probs = self.probabilities()
        names = list(probs)
        if len(names) == 1:
            return names[0]
        rng = _check_rng(rng, "PlannerMix")
        return names[int(rng.choice(len(names), p=np.fromiter(probs.values(), float)))]

    def plan(self, tokens, C: int, rng: np.random.Generator) -> list[int]:
        """Pick a planner by weight with `rng` and return its plan for `tokens` (ids or n)."""
        return plan_by_name(self.choose(rng), tokens, C, rng,
                            min_size=self.min_size, boundary_ids=self.boundary_ids)
