"""``colhead compare`` / ``heads`` / ``demo``: from a dataset to a report on the column's worth.

The orchestration lives here, above the layers (cli -> compare -> extract, cache, heads): it
extracts (or reuses) the caches, loads the raw images the scratch model needs, runs
``heads.run_comparison`` and writes the report.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

SPLIT_DATASETS = ("digits", "elpv", "fashion-mnist", "flowers102")
HEAD_NAMES = ("logreg", "mlp", "knn")


def aligned_labels(train, test) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Class names and integer labels of two caches, mapped onto one class list by name."""
    classes = list(train.classes)
    extra = sorted({test.classes[i] for i in set(test.labels.tolist()) if i >= 0} - set(classes))
    if extra:
        raise ValueError(
            f"The test set has classes the training set lacks: {', '.join(extra[:5])}."
        )
    for name, c in (("training", train), ("test", test)):
        if len(c) == 0:
            raise ValueError(f"The {name} cache {c.path} has no rows.")
        if (c.labels < 0).any():
            raise ValueError(
                f"The {name} cache {c.path} has unlabelled rows; heads need labelled data "
                "(a folder with one sub-folder per class, or a CSV with a label column)."
            )
    pos = {n: i for i, n in enumerate(classes)}
    y_test = np.array([pos[test.classes[i]] for i in test.labels], dtype=np.int64)
    return classes, train.labels.astype(np.int64), y_test


def parse_heads(text: str) -> list[str]:
    names = [h.strip() for h in str(text).split(",") if h.strip()]
    from .heads import make_head

    for n in names:
        make_head(n)  # raises a clear error for unknown names
    return names


def make_head_for(name: str, per_class: int, *, seed: int = 0):
    """A head with the standard protocol settings for ``per_class`` training images per class."""
    from .heads import KNNHead, LogRegHead, MLPHead

    if name == "logreg":
        # The C sweep needs a validation split with a few images per class; with fewer
        # labelled images a fixed, moderate C (scikit-learn's default) is the honest choice.
        return LogRegHead(C=None if per_class >= 5 else 1.0, random_state=seed)
    if name == "mlp":
        return MLPHead(random_state=seed)
    if name == "knn":
        return KNNHead()
    from .heads import make_head

    return make_head(name)


def train_heads(
    train_path, test_path, *, heads=HEAD_NAMES, val_path=None, save_dir=None, log=print
) -> list[dict]:
    """Fit heads on a training cache, score them on a test cache, optionally save them."""
    from .cache import open_cache
    from .heads import metrics, save_head
    from .predict import head_meta

    train, test = open_cache(train_path), open_cache(test_path)
    if train.column_key != test.column_key:
        raise ValueError(
            f"{train_path} and {test_path} hold vectors of different columns "
            f"({train.identity.get('column')} vs {test.identity.get('column')}); "
            "heads must be trained and tested on the same column's vectors."
        )
    classes, y_tr, y_te = aligned_labels(train, test)
    X_val = y_val = None
    if val_path is not None:
        val = open_cache(val_path)
        _, _, y_val = aligned_labels(train, val)
        X_val = val.features
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
    rows = []
    for name in heads:
        head = make_head_for(name, int(np.bincount(y_tr).min()))
        t0 = time.perf_counter()
        if X_val is not None and name in ("logreg", "mlp"):
            head.fit(train.features, y_tr, X_val=X_val, y_val=y_val)
        else:
            head.fit(train.features, y_tr)
        t1 = time.perf_counter()
        proba = head.predict_proba(test.features)
        t2 = time.perf_counter()
        row = {
            "head": name,
            **metrics(y_te, proba, np.asarray(head.classes_), len(classes)),
            "fit_seconds": t1 - t0,
            "predict_seconds": t2 - t1,
        }
        if save_dir is not None:
            meta = head_meta(train)
            meta["class_names"] = classes
            path = save_head(head, Path(save_dir) / f"{name}.npz", meta=meta)
            row["saved"] = str(path)
        rows.append(row)
        log(
            f"{name:<8} top1 {100 * row['top1']:5.1f}%  "
            f"balanced {100 * row['balanced_accuracy']:5.1f}%"
            f"  macro-F1 {100 * row['macro_f1']:5.1f}%  fit {row['fit_seconds']:.2f} s"
            + (f"  -> {row['saved']}" if "saved" in row else "")
        )
    return rows


def load_images(ds, ids, size: int) -> np.ndarray:
    """The raw images of ``ids`` as uint8 (N, size, size, 3): short side resized, centre crop."""
    from .extract import Preprocess, decode, from_array

    pre = Preprocess(size, size, (0.0,) * 3, (1.0,) * 3, "bilinear")
    pos = {id_: i for i, id_ in enumerate(ds.ids)}
    out = np.empty((len(ids), size, size, 3), np.uint8)
    for k, id_ in enumerate(ids):
        content = ds.read(pos[id_])
        out[k] = decode(content, pre) if isinstance(content, bytes) else from_array(content, pre)
    return out


def compare(
    data: str = "elpv",
    *,
    column: str = "efficientnet_lite0",
    shots: str = "1,5,10,all",
    repeats: int = 3,
    heads: str = "logreg,mlp,knn",
    scratch: bool = True,
    scratch_epochs: int | None = None,
    out: str | os.PathLike = "reports/compare",
    cache_dir: str | os.PathLike | None = None,
    train_split: str = "train",
    test_split: str = "test",
    test_size: float = 0.25,
    device: str = "auto",
    precision: str = "auto",
    batch_size: int = 64,
    seed: int = 0,
    progress: bool = True,
    log=print,
) -> Path:
    """Extract (or reuse) caches, train heads and the scratch model, write the report.

    Returns:
        The path of ``report.md``.
    """
    from . import extract as ex
    from .cache import open_cache
    from .heads import (
        Method,
        ScratchClassifier,
        ScratchConfig,
        parse_shots,
        run_comparison,
        write_report,
    )

    shot_list = parse_shots(shots)
    head_names = parse_heads(heads)
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}.")
    kind = data.split(":", 1)[0]
    if kind in SPLIT_DATASETS:
        parts = [
            ex.parse_dataset(data, split=train_split),
            ex.parse_dataset(data, split=test_split),
        ]
    else:
        parts = [ex.parse_dataset(data)]
    t0 = time.perf_counter()
    caches = []
    for ds in parts:
        log(f"extracting {ds.spec} with {column} (reused where cached)")
        r = ex.extract(
            column,
            ds,
            cache_dir=cache_dir,
            device=device,
            precision=precision,
            batch_size=batch_size,
            progress=progress,
        )
        log("  " + r.summary())
        caches.append(open_cache(r.path, require_complete=True))
    extract_s = time.perf_counter() - t0

    if len(caches) == 2:
        train, test = caches
        classes, y_tr, y_te = aligned_labels(train, test)
        tr_ids, te_ids = list(train.ids), list(test.ids)
        X_tr, X_te = train.features, test.features
        ds_tr, ds_te = parts
    else:
        from sklearn.model_selection import train_test_split

        (c,) = caches
        classes, y_all, _ = aligned_labels(c, c)
        i_tr, i_te = train_test_split(
            np.arange(len(c)), test_size=test_size, stratify=y_all, random_state=seed
        )
        i_tr, i_te = np.sort(i_tr), np.sort(i_te)
        y_tr, y_te = y_all[i_tr], y_all[i_te]
        tr_ids, te_ids = list(c.ids[i_tr]), list(c.ids[i_te])
        X_tr, X_te = c.features[i_tr], c.features[i_te]
        ds_tr = ds_te = parts[0]
        train = test = c

    methods = [
        Method(h, lambda per_class, h=h: make_head_for(h, per_class, seed=seed)) for h in head_names
    ]
    data_arrays = {"features": (X_tr, X_te)}
    cfg = ScratchConfig(seed=seed, device=device, progress=False)
    if scratch_epochs is not None:
        cfg.epochs = scratch_epochs
    if scratch:
        log(f"loading {len(tr_ids) + len(te_ids)} raw images at {cfg.image_size} px for scratch")
        data_arrays["images"] = (
            load_images(ds_tr, tr_ids, cfg.image_size),
            load_images(ds_te, te_ids, cfg.image_size),
        )
        methods.append(Method("scratch", lambda per_class: ScratchClassifier(cfg), "images"))
    log(f"training {', '.join(m.name for m in methods)} at shots {shots}")
    results = run_comparison(
        methods,
        data_arrays,
        y_tr,
        y_te,
        n_classes=len(classes),
        shots=shot_list,
        repeats=repeats,
        seed=seed,
        log=log,
    )
    meta = train.metadata
    results.update(
        dataset=data,
        column=column,
        classes=classes,
        n_train=len(y_tr),
        n_test=len(y_te),
        chance=float(np.bincount(y_te, minlength=len(classes)).max() / len(y_te)),
        extract_seconds=extract_s,
        caches=[str(c.path) for c in caches],
        provenance={
            "column": f"{column} ({meta.get('column', {}).get('source', '')}), weights sha256 "
            f"{train.identity.get('weights_sha256', '')[:16]}…",
            "preprocessing": train.identity.get("preprocess"),
            "precision": train.identity.get("precision"),
            "caches": ", ".join(str(c.path) for c in caches),
            "splits": f"{train.identity.get('dataset')} / {test.identity.get('dataset')}"
            if len(caches) == 2
            else f"seeded stratified {1 - test_size:.0%}/{test_size:.0%} "
            f"split of {train.identity.get('dataset')} (seed {seed})",
            "shots": f"{shots}, {repeats} repeats (seeds {seed}..{seed + repeats - 1})",
            "heads": "logreg: standardised L-BFGS, C swept 1e-6..1e5 on a validation split "
            "(fixed C=1 below 5 images/class); mlp: 1 hidden layer, AdamW, early stopping; "
            "knn: cosine, k=20, T=0.07 (DINO)",
            "scratch": f"{cfg.channels} channels, {cfg.image_size} px, <= {cfg.epochs} epochs, "
            "early stopping on a validation split, augmentation"
            if scratch
            else "not run",
            "extraction": f"{extract_s:.1f} s (includes reuse of existing caches)",
            "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
        },
    )
    return write_report(results, out)
