"""95% intervals for the report's accuracies, and the natural order of class names.

One run is a set of independent test predictions, so its top-1 accuracy is a binomial proportion:
its interval is Wilson's (it stays inside [0, 1] and behaves with few images or accuracies near
0 or 1, where the normal approximation does not; Brown, Cai & DasGupta 2001). Balanced accuracy
is the mean of per-class recalls, each a proportion of its own class: its interval adds the
classes' binomial variances (normal approximation, clipped to [0, 1]). Over repeats with
different labelled images, the interval is the mean +- Student's t times the standard error.
"""

from __future__ import annotations

import math
import re

import numpy as np
from scipy import stats

Z95 = 1.959963984540054  # the normal 97.5% quantile


def wilson(successes: float, n: int, *, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``successes / n``.

    statsmodels' ``proportion_confint(method="wilson")`` gives the same numbers; it is not a
    dependency of colhead, and the formula is three lines.
    """
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    lo = 0.0 if successes <= 0 else max(0.0, centre - half)  # exact ends, no 1e-17 residue
    hi = 1.0 if successes >= n else min(1.0, centre + half)
    return (lo, hi)


def balanced_interval(recalls: np.ndarray, supports: np.ndarray) -> tuple[float, float]:
    """Normal-approximation interval of the mean of per-class recalls (classes with support)."""
    keep = supports > 0
    r, n = recalls[keep], supports[keep]
    if not len(r):
        return (0.0, 1.0)
    mean = float(r.mean())
    # a class recalled perfectly still has sampling error: use Wilson's centre for its variance
    p = (r * n + 2) / (n + 4)
    se = math.sqrt(float((p * (1 - p) / n).sum())) / len(r)
    return (max(0.0, mean - Z95 * se), min(1.0, mean + Z95 * se))


def t_interval(values) -> tuple[float, float]:
    """Mean +- t(0.975, n-1) * s / sqrt(n) over repeats (n >= 2; one value gives itself)."""
    v = np.asarray(values, dtype=float)
    if len(v) < 2:
        return (float(v.mean()), float(v.mean()))
    half = float(stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return (max(0.0, float(v.mean()) - half), min(1.0, float(v.mean()) + half))


def run_intervals(y_true: np.ndarray, pred: np.ndarray, n_classes: int) -> dict:
    """``top1_ci`` (Wilson) and ``balanced_accuracy_ci`` of one run's predictions."""
    correct = y_true == pred
    supports = np.bincount(y_true, minlength=n_classes)
    hits = np.bincount(y_true[correct], minlength=n_classes)
    recalls = hits / np.maximum(supports, 1)
    return {
        "top1_ci": list(wilson(int(correct.sum()), len(y_true))),
        "balanced_accuracy_ci": list(balanced_interval(recalls, supports)),
    }


def format_ci(value: float, ci) -> str:
    """``"84.0 [80.1, 87.3]"``: a percentage and its 95% interval."""
    if ci is None:
        return f"{100 * value:.1f}"
    return f"{100 * value:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]"


def natural_key(name: str):
    """Sort key that orders numbers by value: p0.00 < p0.33 < p1.00, img2 < img10."""
    parts = re.split(r"(\d+(?:\.\d+)?)", str(name))
    return [(0, float(p), "") if i % 2 else (1, 0.0, p.lower()) for i, p in enumerate(parts)]


def natural_order(names) -> list[int]:
    """Indices that put ``names`` in natural order."""
    return sorted(range(len(names)), key=lambda i: natural_key(names[i]))
