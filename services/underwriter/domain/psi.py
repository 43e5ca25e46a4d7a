"""Population stability index of served PDs against the champion's training scores (stdlib only).

The reference is the champion's calibrated PDs on its training population, stored in the model's
metadata.json as `score_reference: {"edges": [...], "shares": [...]}` (quantile bins: len(edges) ==
len(shares) + 1). Served PDs outside [edges[0], edges[-1]] count in the first or last bin.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# Empty bins would make log(a/e) infinite; this floor is the usual convention (and evaluate.psi's).
SHARE_FLOOR = 1e-4


@dataclass(frozen=True, slots=True)
class ScoreReference:
    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.edges) < 2 or len(self.edges) != len(self.shares) + 1:
            raise ValueError(f"score_reference needs len(edges) == len(shares) + 1 >= 2, got "
                             f"{len(self.edges)} edges and {len(self.shares)} shares")
        if any(b < a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("score_reference edges must be non-decreasing")
        if any(s < 0 for s in self.shares) or not math.isclose(sum(self.shares), 1.0, abs_tol=1e-6):
            raise ValueError(f"score_reference shares must be >= 0 and sum to 1, got sum {sum(self.shares)}")

    @classmethod
    def from_json(cls, spec: Mapping[str, Any]) -> ScoreReference:
        try:
            return cls(tuple(float(e) for e in spec["edges"]), tuple(float(s) for s in spec["shares"]))
        except (KeyError, TypeError) as exc:
            raise ValueError(f"score_reference needs 'edges' and 'shares' lists: {exc}") from None

    def bin_of(self, value: float) -> int:
        """Index of the bin holding `value`; bins are [e_i, e_i+1), the last one closed, ends clipped."""
        i = bisect.bisect_right(self.edges, value) - 1
        return min(max(i, 0), len(self.shares) - 1)


def psi(expected: Iterable[float], actual: Iterable[float], floor: float = SHARE_FLOOR) -> float:
    """PSI = sum (a - e) * ln(a / e) over bins of two share vectors of the same length."""
    e, a = list(expected), list(actual)
    if len(e) != len(a) or not e:
        raise ValueError(f"psi needs two share vectors of the same non-zero length, got {len(e)} and {len(a)}")
    total = 0.0
    for ei, ai in zip(e, a, strict=True):
        ei, ai = max(ei, floor), max(ai, floor)
        total += (ai - ei) * math.log(ai / ei)
    return total


def shares_of(values: Iterable[float], ref: ScoreReference) -> list[float]:
    """Share of `values` in each reference bin."""
    counts = [0] * len(ref.shares)
    n = 0
    for v in values:
        counts[ref.bin_of(v)] += 1
        n += 1
    return [c / n for c in counts] if n else [0.0] * len(counts)


def reference_from_scores(values: Iterable[float], bins: int = 10) -> ScoreReference:
    """Quantile bins of `values` (ties merged, so maybe fewer than `bins`) and their shares, binned
    exactly as served PDs are binned (`ScoreReference.bin_of`)."""
    xs = sorted(float(v) for v in values)
    if not xs or bins < 1:
        raise ValueError(f"reference_from_scores needs scores and bins >= 1, got {len(xs)} scores, {bins} bins")
    n = len(xs)
    edges = sorted({xs[round(k * (n - 1) / bins)] for k in range(bins + 1)})
    if len(edges) < 2:
        edges = [edges[0], edges[0]]
    shares = [1.0] + [0.0] * (len(edges) - 2)  # placeholder to build the binning, replaced below
    probe = ScoreReference(tuple(edges), tuple(shares))
    return ScoreReference(probe.edges, tuple(shares_of(xs, probe)))


class RollingPSI:
    """PSI of the last `window` PDs against a reference, recomputed every `every` observations.

    Bin counts are kept incrementally (O(1) per score); `add` returns the new PSI when one is due
    and the window holds at least `min_count` scores, else None.
    """

    def __init__(self, ref: ScoreReference, window: int = 5000, every: int = 200, min_count: int = 200) -> None:
        if window < 1 or every < 1:
            raise ValueError(f"window and every must be >= 1, got {window} and {every}")
        self.ref = ref
        self.every = every
        self.min_count = min(min_count, window)
        self._bins: deque[int] = deque(maxlen=window)
        self._counts = [0] * len(ref.shares)
        self._since = 0

    def add(self, pd: float) -> float | None:
        if len(self._bins) == self._bins.maxlen:
            self._counts[self._bins[0]] -= 1
        b = self.ref.bin_of(pd)
        self._bins.append(b)
        self._counts[b] += 1
        self._since += 1
        if self._since < self.every or len(self._bins) < self.min_count:
            return None
        self._since = 0
        return self.value()

    def value(self) -> float | None:
        n = len(self._bins)
        return psi(self.ref.shares, [c / n for c in self._counts]) if n else None
