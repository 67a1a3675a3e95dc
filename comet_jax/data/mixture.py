"""A weighted mixture of record sources (`data.mixture: [{path, weight}, ...]`), built on
grain's `MapDataset.mix`: a fixed interleaving of the components in proportion to their
weights, so that record i of the mixture is the same on every run and a loader's saved state
(an index into it) resumes exactly.

One pass over the mixture reads every component at least once: its length is
max_i(n_i / p_i) records (n_i records, p_i = weight_i / sum of weights), and a component that
needs more draws than it has records is repeated (upsampled) in whole passes. The loader's
sampler then shuffles the mixture's indices, which keeps the proportions of every pass."""

from __future__ import annotations

import math
from typing import Any, Sequence

import grain


class MixtureSource:
    """Random access over the mixture (a grain MapDataset underneath); `parts` lists, per
    component, (records, weight share, passes of it per pass of the mixture)."""

    def __init__(self, sources: Sequence[Any], weights: Sequence[float]):
        if len(sources) != len(weights) or not sources:
            raise ValueError(f"a mixture needs one weight per source, got {len(sources)} sources and "
                             f"{len(weights)} weights")
        if any(not (w > 0 and math.isfinite(w)) for w in weights):
            raise ValueError(f"mixture weights must be positive numbers, got {list(weights)}")
        total = float(sum(weights))
        shares = [w / total for w in weights]
        length = max(len(s) / p for s, p in zip(sources, shares))
        repeats = [max(1, math.ceil(p * length / len(s))) for s, p in zip(sources, shares)]
        self.sources = list(sources)
        self.parts = list(zip([len(s) for s in sources], shares, repeats))
        self._mixed = grain.MapDataset.mix(
            [grain.MapDataset.source(s).repeat(r) for s, r in zip(sources, repeats)], shares)

    @property
    def num_bad(self) -> int:
        return sum(s.num_bad for s in self.sources)

    def __len__(self) -> int:
        return len(self._mixed)

    def __repr__(self) -> str:
        parts = ", ".join(f"{s!r}: {p:.3f} x{r}" for s, (_, p, r) in zip(self.sources, self.parts))
        return f"MixtureSource(records={len(self)}; {parts})"

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} outside [0, {len(self)})")
        return self._mixed[index]
