"""The comparison: every method on the same splits, the same labelled images, the same metrics.

Methods see one of two inputs: the cached vectors ("features": heads on the frozen column) or
the raw images ("images": the scratch model). Label efficiency is measured by training every
method on ``n`` labelled images per class — the same images for every method within a repeat —
for each ``n`` in ``shots`` ("all" = the whole training split), repeated with different seeds.
Only the training split is ever subsampled; the test split is always whole and never seen by
any fit (validation splits for early stopping and C sweeps are carved from training data).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    top_k_accuracy_score,
)


@dataclass
class Method:
    """A competitor: ``make(n_train_per_class)`` returns a fresh estimator."""

    name: str
    make: Callable[[int], object]
    input: str = "features"  # "features" | "images"


def parse_shots(text: str) -> list[int | str]:
    """``"1,5,10,all"`` -> ``[1, 5, 10, "all"]``, validated."""
    out: list[int | str] = []
    for part in str(text).split(","):
        part = part.strip().lower()
        if part == "all":
            out.append("all")
        elif part.isdigit() and int(part) > 0:
            out.append(int(part))
        else:
            raise ValueError(f"--shots takes positive integers and 'all', got {part!r}.")
    if not out:
        raise ValueError("--shots is empty.")
    return sorted(set(out), key=lambda s: (s == "all", s if s != "all" else 0))


def few_shot_indices(y: np.ndarray, n: int | str, seed: int) -> np.ndarray:
    """Indices of ``n`` training items per class (all of a class that has fewer), seeded."""
    if n == "all":
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def metrics(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, n_classes: int) -> dict:
    """top-1, balanced accuracy, macro-F1 and (with more than 5 classes) top-5."""
    full = np.zeros((len(proba), n_classes))
    full[:, classes] = proba  # a few-shot fit may have seen only some classes
    pred = full.argmax(1)
    out = {
        "top1": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "macro_f1": float(
            f1_score(y_true, pred, average="macro", labels=np.arange(n_classes), zero_division=0)
        ),
    }
    if n_classes > 5:
        out["top5"] = float(top_k_accuracy_score(y_true, full, k=5, labels=np.arange(n_classes)))
    return out


def run_comparison(
    methods: list[Method],
    data: dict[str, tuple[np.ndarray, np.ndarray]],
    y_train: np.ndarray,
    y_test: np.ndarray,
    *,
    n_classes: int,
    shots=("all",),
    repeats: int = 3,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit and score every method at every shot count; return rows, a summary and confusions.

    Args:
        methods: the competitors.
        data: per input kind, ``(train, test)`` arrays aligned with ``y_train``/``y_test``.
        y_train, y_test: integer labels in ``range(n_classes)``.
        shots: labelled images per class, or "all".
        repeats: seeds per shot count ("all" runs once: it has no sampling to vary).
    """
    rows, confusions = [], {}
    for n in shots:
        for r in range(1 if n == "all" else repeats):
            idx = few_shot_indices(y_train, n, seed + r)
            per_class = int(np.bincount(y_train[idx]).max())
            for m in methods:
                Xtr, Xte = data[m.input]
                est = m.make(per_class)
                t0 = time.perf_counter()
                est.fit(Xtr[idx], y_train[idx])
                t1 = time.perf_counter()
                proba = est.predict_proba(Xte)
                t2 = time.perf_counter()
                row = {
                    "method": m.name,
                    "shots": str(n),
                    "repeat": r,
                    "n_train": len(idx),
                    **metrics(y_test, proba, np.asarray(est.classes_, dtype=int), n_classes),
                    "fit_seconds": t1 - t0,
                    "predict_seconds": t2 - t1,
                }
                rows.append(row)
                if n == "all":
                    full = np.zeros((len(proba), n_classes))
                    full[:, np.asarray(est.classes_, dtype=int)] = proba
                    confusions[m.name] = confusion_matrix(
                        y_test, full.argmax(1), labels=np.arange(n_classes)
                    ).tolist()
                log(
                    f"  {m.name:<8} shots={str(n):<4} rep={r} top1={row['top1']:.3f} "
                    f"fit={row['fit_seconds']:.1f}s"
                )
    return {"rows": rows, "summary": summarise(rows), "confusion": confusions}


def summarise(rows: list[dict]) -> list[dict]:
    """Mean and standard deviation per (method, shots) over repeats."""
    keys = ["top1", "balanced_accuracy", "macro_f1", "top5", "fit_seconds", "predict_seconds"]
    groups: dict[tuple[str, str], list[dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["shots"]), []).append(row)
    out = []
    for (method, shots), rs in groups.items():
        s = {"method": method, "shots": shots, "repeats": len(rs), "n_train": rs[0]["n_train"]}
        for k in keys:
            if k in rs[0]:
                v = np.array([x[k] for x in rs], dtype=float)
                s[k], s[k + "_std"] = float(v.mean()), float(v.std())
        out.append(s)
    return out
