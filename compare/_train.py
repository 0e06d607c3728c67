"""``colhead heads``: fit heads on one cache, score them on another, save them for ``predict``."""

from __future__ import annotations

import re
import time
from collections import Counter
from pathlib import Path

import numpy as np


def head_meta(cache) -> dict:
    """What a head saved from ``cache`` (a FeatureCache) must remember about its features."""
    ident = cache.identity
    return {
        "cache_fingerprint": cache.fingerprint,
        "cache_config_key": cache.config_key,
        "column_key": cache.column_key,
        "column": ident.get("column"),
        "weights_sha256": ident.get("weights_sha256"),
        "preprocess": ident.get("preprocess"),
        "precision": ident.get("precision"),
        "dataset": ident.get("dataset"),
        "class_names": list(cache.classes),
    }


def check_labelled(cache, role: str) -> None:
    """A cache heads can learn from or be scored on: rows, every one of them labelled."""
    if len(cache) == 0:
        raise ValueError(f"The {role} cache {cache.path} has no rows.")
    if not len(cache.classes) or (cache.labels < 0).all():
        raise ValueError(
            f"The {role} cache {cache.path} has no labels (its data set "
            f"{cache.identity.get('dataset')} has no classes); heads need labelled data: a "
            "folder with one sub-folder per class, or a CSV with a label column."
        )
    if (cache.labels < 0).any():
        raise ValueError(
            f"The {role} cache {cache.path} has {int((cache.labels < 0).sum())} unlabelled rows; "
            "heads need every row labelled."
        )


def aligned_labels(train, test, *, role: str = "test") -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names and integer labels of two caches, mapped onto one class list by name."""
    check_labelled(train, "training")
    check_labelled(test, role)
    classes = list(train.classes)
    extra = sorted({test.classes[i] for i in set(test.labels.tolist())} - set(classes))
    if extra:
        raise ValueError(
            f"The {role} set has classes the training set lacks: {', '.join(extra[:5])}; "
            "heads can only predict classes they were trained on."
        )
    pos = {n: i for i, n in enumerate(classes)}
    y_other = np.array([pos[test.classes[i]] for i in test.labels], dtype=np.int64)
    return classes, train.labels.astype(np.int64), y_other


def same_column(a, b, role: str = "test") -> None:
    """Refuse two caches whose vectors come from different columns (or weights, preprocessing)."""
    if a.column_key != b.column_key:
        raise ValueError(
            f"{a.path} and the {role} cache {b.path} hold vectors of different columns "
            f"({a.identity.get('column')} vs {b.identity.get('column')}, or other weights or "
            "preprocessing); heads must be trained and scored on the same column's vectors."
        )


def parse_heads(text: str | None) -> list[str]:
    """``"logreg,knn"`` -> ``["logreg", "knn"]``; None -> the registry's default kinds.

    An unknown name raises with the kinds there are and the closest one.
    """
    from ..heads import DEFAULT_HEADS, head_kind

    if text is None:
        return list(DEFAULT_HEADS)
    names = [h.strip() for h in str(text).split(",") if h.strip()]
    if not names:
        raise ValueError(f"--head lists no head kinds (got {text!r}); e.g. --head logreg,knn.")
    for n in names:
        head_kind(n)  # raises a clear error for unknown names
    return names


def head_file(save_dir: Path, stem: str, head: str) -> Path:
    """``DIR/<stem>-<head>.npz``, or ``-2``, ``-3``... when that file belongs to another task."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", stem).strip("-.") or "head"
    return Path(save_dir) / f"{stem}-{head}.npz"


def _free(path: Path, meta: dict) -> Path:
    """``path`` if new or a head of the same training cache (a rerun), else a numbered sibling."""
    from ..heads import load_head

    k = 2
    candidate = path
    while candidate.exists():
        try:
            _, old = load_head(candidate)
            if old.get("cache_fingerprint") == meta["cache_fingerprint"]:
                return candidate  # the same task retrained: replacing it is what was asked
        except ValueError:
            pass  # not a head we can read: never overwrite it
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate


def describe_labels(classes: list[str], y: np.ndarray, role: str) -> str:
    """``"test: N=9; classes cat 3, dog 3, eel 3; majority-class baseline 33.3% (cat)"``."""
    counts = Counter(y.tolist())
    shown = ", ".join(f"{classes[c]} {counts.get(c, 0)}" for c in range(len(classes))[:12])
    more = f", ... ({len(classes)} classes)" if len(classes) > 12 else ""
    top = max(range(len(classes)), key=lambda c: counts.get(c, 0))
    return (
        f"{role}: N={len(y)}; classes {shown}{more}; majority-class baseline "
        f"{100 * counts.get(top, 0) / max(1, len(y)):.1f}% ({classes[top]})"
    )


def train_heads(
    train_path,
    test_path,
    *,
    heads=None,
    val_path=None,
    unlabelled_path=None,
    save_dir=None,
    name: str | None = None,
    log=print,
) -> list[dict]:
    """Fit heads on a training cache, score them on a test cache, optionally save them.

    ``unlabelled_path``: a cache of the same column whose rows' labels, if any, are ignored;
    heads that learn from unlabelled vectors (``HeadKind.uses_unlabelled``) get them.

    Saved heads are named ``<name>-<head>.npz`` (``name`` defaults to the training data's name),
    and never overwrite a head of another training cache.
    """
    from ..cache import open_cache
    from ..heads import head_kind, make_head_for, metrics, save_head
    from ._data import data_name

    train, test = open_cache(train_path), open_cache(test_path)
    same_column(train, test)
    classes, y_tr, y_te = aligned_labels(train, test)
    X_val = y_val = None
    if val_path is not None:
        val = open_cache(val_path)
        same_column(train, val, "validation")
        _, _, y_val = aligned_labels(train, val, role="validation")
        X_val = val.features
    X_unl = None
    if unlabelled_path is not None:
        unl = open_cache(unlabelled_path)
        same_column(train, unl, "unlabelled")
        X_unl = unl.features
        log(f"unlabelled: {len(X_unl)} vectors from {unlabelled_path}, for semi-supervised heads")
    log(describe_labels(classes, y_tr, "train"))
    log(describe_labels(classes, y_te, "test"))
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    stem = name or data_name(str(train.identity.get("dataset") or Path(train_path).stem))
    rows = []
    for kind in parse_heads(heads) if heads is None or isinstance(heads, str) else heads:
        head = make_head_for(kind, int(np.bincount(y_tr).min()))
        t0 = time.perf_counter()
        if X_val is not None and head_kind(kind).uses_val:
            head.fit(train.features, y_tr, X_val=X_val, y_val=y_val)
        elif X_unl is not None and head_kind(kind).uses_unlabelled:
            head.fit(train.features, y_tr, X_unlabelled=X_unl)
        else:
            head.fit(train.features, y_tr)
        t1 = time.perf_counter()
        proba = head.predict_proba(test.features)
        t2 = time.perf_counter()
        row = {
            "head": kind,
            **metrics(y_te, proba, np.asarray(head.classes_), len(classes)),
            "fit_seconds": t1 - t0,
            "predict_seconds": t2 - t1,
        }
        if save_dir is not None:
            meta = head_meta(train) | {"class_names": classes}
            path = save_head(head, _free(head_file(save_dir, stem, kind), meta), meta=meta)
            row["saved"] = str(path)
        rows.append(row)
        ci = row["top1_ci"]
        log(
            f"{kind:<8} top1 {100 * row['top1']:5.1f}% [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]  "
            f"balanced {100 * row['balanced_accuracy']:5.1f}%"
            f"  macro-F1 {100 * row['macro_f1']:5.1f}%  fit {row['fit_seconds']:.2f} s"
            + (f"  -> {row['saved']}" if "saved" in row else "")
        )
    return rows
