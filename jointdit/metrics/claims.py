"""Whether one system beats another on a metric beyond the noise of a few dozen clips.

The systems of one evaluation are sampled from the same validation clips with the same noise
per clip, so their per-clip scores pair up. A claim holds on one run when the mean difference
exceeds twice the combined standard error of the two means (sqrt(se_a^2 + se_b^2), which
ignores the pairing and so is the stricter test); the paired standard error of the per-clip
differences is reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Comparison:
    better: str
    worse: str
    metric: str
    difference: float  # mean(better) - mean(worse)
    combined_se: float  # sqrt(se_better^2 + se_worse^2)
    paired_se: float  # standard error of the per-clip differences
    n: int

    @property
    def holds(self) -> bool:
        """Beyond noise: the difference exceeds twice the combined standard error."""
        return self.difference > 2 * self.combined_se

    def to_dict(self) -> dict:
        return {**asdict(self), "holds": self.holds}


def _se(x: np.ndarray) -> float:
    return float(x.std(ddof=1) / math.sqrt(len(x))) if len(x) > 1 else math.nan


def compare(
    better: str, worse: str, metric: str, a: Sequence[float], b: Sequence[float]
) -> Comparison:
    """`better`'s per-clip scores `a` against `worse`'s `b`, clip i against clip i."""
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1 or len(x) < 2:
        raise ValueError(
            f"{metric}: need two equal-length lists of per-clip scores (>= 2 clips), "
            f"got {x.shape} and {y.shape}"
        )
    return Comparison(
        better=better,
        worse=worse,
        metric=metric,
        difference=float(x.mean() - y.mean()),
        combined_se=math.hypot(_se(x), _se(y)),
        paired_se=_se(x - y),
        n=len(x),
    )
