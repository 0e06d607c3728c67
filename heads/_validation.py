"""Validation data for the heads' model selection: a held-out split, folds, or the caller's own.

LogRegHead picks C and MLPHead stops early on data carved from what ``fit`` receives, never on
anything else; these helpers are the one place that carves it.
"""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import StratifiedKFold, train_test_split
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import column_or_1d, validate_data


def validation_split(X, y, *, val_size, random_state, who: str):
    """Split off a seeded validation set, stratified whenever the class counts allow it.

    Stratification needs at least two samples per class and room for every class on both
    sides; tiny or very unbalanced sets fall back to a plain seeded shuffle split rather than
    failing, because the split only serves model selection.
    """
    n = len(y)
    if n < 2:
        raise ValueError(
            f"{who} needs at least 2 samples to split off a validation set; got {n} sample. "
            "Pass X_val and y_val to fit, or train on more samples."
        )
    _, counts = np.unique(y, return_counts=True)
    n_val = int(np.ceil(val_size * n)) if isinstance(val_size, float) else int(val_size)
    can_stratify = counts.min() >= 2 and len(counts) <= n_val <= n - len(counts)
    return train_test_split(
        X,
        y,
        test_size=val_size,
        random_state=random_state,
        stratify=y if can_stratify else None,
    )


def stratified_folds(y, n_splits: int, random_state) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(train, validation)`` index pairs of a seeded stratified k-fold, k capped by the data.

    k is at most the size of the smallest class, so every class appears in every validation
    fold: with 2 labelled images per class this is leave-one-out within each class (2 folds),
    with 5 per class and ``n_splits=5`` it is leave-one-per-class-out. Needs >= 2 per class.
    """
    _, counts = np.unique(y, return_counts=True)
    k = int(min(n_splits, counts.min()))
    if k < 2:
        raise ValueError(
            f"Cross-validation needs at least 2 samples of every class; the smallest class has "
            f"{counts.min()}. Set C (no selection), or give more labelled samples."
        )
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=random_state)
    return list(folds.split(np.zeros((len(y), 1)), y))


def check_val(estimator, X_val, y_val):
    """Validate an explicit validation set against the features seen in fit."""
    if (X_val is None) != (y_val is None):
        raise ValueError(
            "Pass both X_val and y_val, or neither; got only "
            f"{'X_val' if y_val is None else 'y_val'}."
        )
    X_val = validate_data(estimator, X_val, reset=False, dtype=[np.float64, np.float32])
    y_val = column_or_1d(y_val, warn=True)
    if len(y_val) != len(X_val) or len(y_val) == 0:
        raise ValueError(
            f"X_val and y_val must be non-empty and have the same number of rows; got "
            f"{len(X_val)} and {len(y_val)}."
        )
    check_classification_targets(y_val)
    return X_val, y_val
