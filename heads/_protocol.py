"""The shots protocol: every method on the same splits, the same labelled images, the same metrics.

Methods see one of two inputs: the cached vectors ("features": heads on the frozen column) or
the raw images ("images": the scratch model). Label efficiency is measured by training every
method on ``n`` labelled images per class — the same images for every method within a repeat —
for each ``n`` in ``shots`` ("all" = the whole training pool), repeated with different seeds.

Selection is honest: a validation split is carved from the training images once (or given), no
method ever trains on it, and the best method for each shot count is the one with the highest
mean validation score; its test score is then reported. The test split is whole, never sampled
and never used to choose anything.
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

from ._stats import run_intervals, t_interval, wilson

# Selection and the label-efficiency plot use balanced accuracy: few-shot training sets are
# balanced, and top-1 on an imbalanced split would reward whatever predicts the majority class.
SELECT_METRIC = "balanced_accuracy"
VAL_FRACTION = 0.2


@dataclass
class Method:
    """A competitor: ``make(n_train_per_class)`` returns a fresh estimator."""

    name: str
    make: Callable[[int], object]
    input: str = "features"  # "features" | "images"
    unlabelled: bool = False  # fit also gets X_unlabelled: the training pool less its labels


def make_head_for(name: str, per_class: int, *, seed: int = 0):
    """A head with the protocol's settings for ``per_class`` training images per class.

    The settings are the head registry's (``HeadKind.protocol``): one table for every caller.
    """
    from ._registry import make_protocol_head

    return make_protocol_head(name, per_class, seed=seed)


def head_methods(names, *, seed: int = 0) -> list[Method]:
    """The comparison's competitors for the registry's head kinds ``names``."""
    from ._registry import head_kind

    return [
        Method(
            n,
            lambda per_class, n=n: make_head_for(n, per_class, seed=seed),
            unlabelled=head_kind(n).uses_unlabelled,
        )
        for n in names
    ]


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
        raise ValueError("--shots is empty; give e.g. --shots 1,5,10,all.")
    return sorted(set(out), key=lambda s: (s == "all", s if s != "all" else 0))


def few_shot_indices(y: np.ndarray, n: int | str, seed: int) -> np.ndarray:
    """Indices of ``n`` training items per class (all of a class that has fewer), seeded."""
    if n == "all":
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    idx = [rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)]
    return np.sort(np.concatenate(idx))


def validation_split(
    y: np.ndarray, fraction: float = VAL_FRACTION, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified ``(pool, validation)`` indices: ``fraction`` of each class (>= 1) held out.

    A class with a single image stays in the pool: it cannot be both trained on and validated.
    """
    rng = np.random.default_rng(seed + 7919)  # not the few-shot seeds: independent draws
    val = []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        if len(members) >= 2:
            val.append(members[: max(1, int(round(fraction * len(members))))])
    val_idx = np.sort(np.concatenate(val)) if val else np.array([], dtype=int)
    pool = np.setdiff1d(np.arange(len(y)), val_idx)
    if not len(val_idx):
        raise ValueError(
            "No validation split can be carved: every class has a single training image. "
            "Give at least 2 labelled images per class."
        )
    return pool, val_idx


def full_proba(proba: np.ndarray, classes, n_classes: int) -> np.ndarray:
    """Probabilities over all ``n_classes`` (a few-shot fit may have seen only some)."""
    full = np.zeros((len(proba), n_classes))
    full[:, np.asarray(classes, dtype=int)] = proba
    return full


def metrics(y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray, n_classes: int) -> dict:
    """top-1, balanced accuracy, macro-F1, (with more than 5 classes) top-5, and 95% intervals."""
    full = full_proba(proba, classes, n_classes)
    pred = full.argmax(1)
    out = {
        "top1": float(accuracy_score(y_true, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, pred)),
        "macro_f1": float(
            f1_score(y_true, pred, average="macro", labels=np.arange(n_classes), zero_division=0)
        ),
        **run_intervals(np.asarray(y_true), pred, n_classes),
    }
    if n_classes > 5:
        out["top5"] = float(top_k_accuracy_score(y_true, full, k=5, labels=np.arange(n_classes)))
        out["top5_ci"] = list(wilson(round(out["top5"] * len(y_true)), len(y_true)))
    return out


def run_comparison(
    methods: list[Method],
    data: dict[str, tuple],
    y_train: np.ndarray,
    y_test: np.ndarray,
    *,
    n_classes: int,
    shots=("all",),
    repeats: int = 3,
    seed: int = 0,
    y_val: np.ndarray | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Fit every method at every shot count, choose the best on validation, score on test.

    Args:
        methods: the competitors.
        data: per input kind, ``(train, test)`` arrays, or ``(train, val, test)`` when
            ``y_val`` is given (then no validation split is carved from ``train``).
        y_train, y_test: integer labels in ``range(n_classes)``.
        shots: labelled images per class, or "all".
        repeats: seeds per shot count ("all" runs once: it has no sampling to vary).
        y_val: labels of a given validation split.

    Returns:
        ``rows`` (one per fit), ``summary`` (per method and shot count, with 95% intervals),
        ``best`` (the method chosen on validation for the largest shot count, with
        ``by_shots`` for every count), ``best_head`` (the same among feature methods),
        ``confusion`` and ``predictions`` on test at the largest shot count, ``protocol``.
    """
    if y_val is None:
        pool, val = validation_split(y_train, seed=seed)
        split = {k: (v[0][pool], v[0][val], v[1]) for k, v in data.items()}
        y_pool, y_val = y_train[pool], y_train[val]
        how = f"{VAL_FRACTION:.0%} of each class of the training images, seed {seed}"
    else:
        split, y_pool, how = data, y_train, "the data's own validation split"
    last = shots[-1]
    rows, confusions, predictions = [], {}, {}
    for n in shots:
        for r in range(1 if n == "all" else repeats):
            idx = few_shot_indices(y_pool, n, seed + r)
            per_class = int(np.bincount(y_pool[idx]).max())
            for m in methods:
                Xtr, Xval, Xte = split[m.input]
                est = m.make(per_class)
                t0 = time.perf_counter()
                if m.unlabelled:  # the rest of the pool, labels withheld (never val/test)
                    est.fit(Xtr[idx], y_pool[idx], X_unlabelled=np.delete(Xtr, idx, axis=0))
                else:
                    est.fit(Xtr[idx], y_pool[idx])
                t1 = time.perf_counter()
                proba = est.predict_proba(Xte)
                t2 = time.perf_counter()
                classes = np.asarray(est.classes_, dtype=int)
                v = metrics(y_val, est.predict_proba(Xval), classes, n_classes)
                row = {
                    "method": m.name,
                    "shots": str(n),
                    "repeat": r,
                    "n_train": len(idx),
                    **metrics(y_test, proba, classes, n_classes),
                    "val_top1": v["top1"],
                    "val_balanced_accuracy": v["balanced_accuracy"],
                    "fit_seconds": t1 - t0,
                    "predict_seconds": t2 - t1,
                }
                rows.append(row)
                if n == last and r == 0:
                    pred = full_proba(proba, classes, n_classes).argmax(1)
                    predictions[m.name] = pred.tolist()
                    confusions[m.name] = confusion_matrix(
                        y_test, pred, labels=np.arange(n_classes)
                    ).tolist()
                log(
                    f"  {m.name:<8} shots={str(n):<4} rep={r} val={v[SELECT_METRIC]:.3f} "
                    f"test={row[SELECT_METRIC]:.3f} fit={row['fit_seconds']:.1f}s"
                )
    summary = summarise(rows)
    heads = [m.name for m in methods if m.input == "features"]
    best = {"shots": str(last), **select_best(summary, str(last))}
    best["by_shots"] = [select_best(summary, str(n)) | {"shots": str(n)} for n in shots]
    return {
        "rows": rows,
        "summary": summary,
        "best": best,
        "best_head": select_best(summary, str(last), among=heads) if heads else None,
        "confusion": confusions,
        "predictions": predictions,
        "protocol": {
            "validation": how,
            "n_pool": len(y_pool),
            "n_val": len(y_val),
            "selection_metric": SELECT_METRIC,
        },
    }


def select_best(summary: list[dict], shots: str, *, among=None) -> dict:
    """The method with the highest mean validation score at ``shots``; its test score.

    Ties go to the method listed first. The test score is reported, never consulted.
    """
    cands = [s for s in summary if s["shots"] == shots and (among is None or s["method"] in among)]
    if not cands:
        raise ValueError(f"No results at shots={shots!r} to choose from.")
    key = "val_" + SELECT_METRIC
    top = max(cands, key=lambda s: s[key])  # max keeps the first of equal scores
    return {
        "method": top["method"],
        "selected_on": "validation",
        "metric": SELECT_METRIC,
        "validation": top[key],
        "test": top[SELECT_METRIC],
        "test_ci": top[SELECT_METRIC + "_ci"],
        "test_top1": top["top1"],
        "test_top1_ci": top["top1_ci"],
    }


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, standard deviation and 95% interval per (method, shots) over repeats.

    One run keeps its own interval (Wilson for top-1); several runs give mean +- t-interval.
    """
    keys = ["top1", "balanced_accuracy", "macro_f1", "top5", "val_top1", "val_balanced_accuracy"]
    keys += ["fit_seconds", "predict_seconds"]
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
        for k in ("top1", "balanced_accuracy", "top5"):
            if k in s and len(rs) == 1:
                s[k + "_ci"] = rs[0].get(k + "_ci")
            elif k in s:
                # Repeats that agree give a t-interval of width 0, yet the test set's own
                # sampling error remains: never report less than the runs' mean interval.
                lo, hi = t_interval([x[k] for x in rs])
                runs = np.array([x[k + "_ci"] for x in rs], dtype=float).mean(0)
                s[k + "_ci"] = [min(lo, float(runs[0])), max(hi, float(runs[1]))]
        out.append(s)
    return out
