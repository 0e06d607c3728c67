"""``colhead compare`` / ``demo``: from a data set to a report on what the column is worth.

Extract (or reuse) the caches of each split, load the raw images the scratch model needs with
the column's own preprocessing, run the shots protocol (selection on validation, scores on
test) and write the report.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._columns import parse_columns, rank_columns
from ._data import (
    data_name,
    is_pretrained,
    load_images,
    report_dir,
    resolve_specs,
    scaled_preprocess,
)
from ._train import aligned_labels, parse_heads, same_column

THUMB = 128  # pixels of the misclassified examples in the report


def _extract_all(specs: dict, *, column, cache_dir, device, precision, batch_size, progress, log):
    """Extract (or reuse) one cache per role; also return what extraction cost."""
    from .. import extract as ex
    from ..cache import open_cache

    parts, caches, cost = {}, {}, {"seconds": 0.0, "written": 0, "reused": 0}
    for role, (spec, split) in specs.items():
        parts[role] = ex.parse_dataset(spec, split=split)  # cheap checks first, no model yet
    for role, ds in parts.items():
        log(f"extracting {ds.spec} ({role}) with {column} (reused where cached)")
        r = ex.extract(
            column, ds, cache_dir=cache_dir, device=device, precision=precision,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
        log("  " + r.summary())
        caches[role] = open_cache(r.path, require_complete=True)
        cost["seconds"] += r.seconds
        cost["written"] += r.written
        cost["reused"] += r.reused
    total = cost["written"] + cost["reused"]
    # Reused rows cost nothing now; the one-off cost of all rows is estimated from this run's
    # rate, and not claimed at all when nothing was extracted (issue 12).
    cost["one_off_seconds"] = cost["seconds"] * total / cost["written"] if cost["written"] else None
    return parts, caches, cost


def _arrays(parts, caches, *, test_size: float, seed: int, log):
    """Labels, vectors, ids and data sets per role, from given splits or a seeded split."""
    from sklearn.model_selection import train_test_split

    if "all" in caches:
        c, ds = caches["all"], parts["all"]
        classes, y_all, _ = aligned_labels(c, c)
        i_tr, i_te = train_test_split(
            np.arange(len(c)), test_size=test_size, stratify=y_all, random_state=seed
        )
        out = {}
        for role, i in (("train", np.sort(i_tr)), ("test", np.sort(i_te))):
            out[role] = (y_all[i], c.features[i], list(c.ids[i]), ds)
        return classes, out
    train = caches["train"]
    out = {}
    for role, c in caches.items():
        same_column(train, c, role)
        classes, y_tr, y = aligned_labels(train, c, role="validation" if role == "val" else role)
        out[role] = (y_tr if role == "train" else y, c.features, list(c.ids), parts[role])
    return list(train.classes), out


def compare(
    data: str | None = "elpv",
    *,
    train_data: str | None = None,
    test_data: str | None = None,
    val_data: str | None = None,
    column: str = "efficientnet_lite0",
    shots: str = "1,5,10,all",
    repeats: int = 3,
    heads: str | None = None,
    scratch: bool = True,
    scratch_epochs: int | None = None,
    finetune: bool = False,
    scratch_column: bool = False,
    column_epochs: int | None = None,
    out: str | os.PathLike | None = None,
    force: bool = False,
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

    ``column`` may name several columns (``"A,B"``): the first gets the full comparison, every
    other the heads on the same splits and shots, and the report ranks them (``_columns``).
    ``finetune``/``scratch_column`` add those rows (slow on a CPU; ``_finetune``).

    The report goes to ``out`` (default ``reports/<name of the data>``); an existing report
    there is replaced only with ``force``, else the report is written beside it (``-2``, ...).

    Returns:
        The path of ``report.md``.
    """
    from ..heads import (
        Method,
        ScratchClassifier,
        ScratchConfig,
        head_kind,
        head_methods,
        parse_shots,
        run_comparison,
        write_report,
    )

    shot_list, head_names = parse_shots(shots), parse_heads(heads)
    columns = parse_columns(column)
    column = columns[0]
    if repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {repeats}.")
    specs = resolve_specs(
        data, train_data=train_data, test_data=test_data, val_data=val_data,
        train_split=train_split, test_split=test_split,
    )  # fmt: skip
    name = data_name(next(iter(specs.values()))[0] if data is None else data)
    parts, caches, cost = _extract_all(
        specs, column=column, cache_dir=cache_dir, device=device, precision=precision,
        batch_size=batch_size, progress=progress, log=log,
    )  # fmt: skip
    classes, arr = _arrays(parts, caches, test_size=test_size, seed=seed, log=log)
    roles = [r for r in ("train", "val", "test") if r in arr]
    y = {r: arr[r][0] for r in roles}
    train = next(iter(caches.values()))
    pre = train.identity.get("preprocess") or train.metadata.get("preprocess")

    methods = head_methods(head_names, seed=seed)
    data_arrays = {"features": tuple(arr[r][1] for r in roles)}
    cfg = ScratchConfig(seed=seed, device=device, progress=False)
    if scratch_epochs is not None:
        cfg.epochs = scratch_epochs
    if scratch:
        n = sum(len(arr[r][2]) for r in roles)
        log(f"loading {n} raw images at {cfg.image_size} px (the column's preprocessing, scaled)")
        small = scaled_preprocess(pre, cfg.image_size)
        data_arrays["images"] = tuple(load_images(arr[r][3], arr[r][2], small) for r in roles)
        methods.append(Method("scratch", lambda per_class: ScratchClassifier(cfg), "images"))
    extra = [m for m, on in (("finetune", finetune), ("scratch-column", scratch_column)) if on]
    if extra:
        from ._finetune import ColumnTrainConfig, column_methods

        ccfg = ColumnTrainConfig(seed=seed, device=device, precision=precision)
        ccfg.epochs = column_epochs or ccfg.epochs
        log(f"loading the raw images at {pre['crop']} px for {', '.join(extra)}")
        full = scaled_preprocess(pre, pre["crop"])
        data_arrays["column_images"] = tuple(load_images(arr[r][3], arr[r][2], full) for r in roles)
        methods += column_methods(extra, column, pre, config=ccfg)
    log(f"training {', '.join(m.name for m in methods)} at shots {shots}")
    protocol = dict(
        y_train=y["train"], y_test=y["test"], n_classes=len(classes), shots=shot_list,
        repeats=repeats, seed=seed, y_val=y.get("val"),
    )  # fmt: skip
    results = run_comparison(methods, data_arrays, log=log, **protocol)
    meta = train.metadata
    col_meta = meta.get("column", {})
    splits = (
        " / ".join(f"{r}: {parts[r].spec}" for r in roles)
        if "all" not in parts
        else f"seeded stratified {1 - test_size:.0%}/{test_size:.0%} split of "
        f"{parts['all'].spec} (seed {seed})"
    )
    results.update(
        dataset=name,
        data=data if data is not None else {r: s for r, (s, _) in specs.items()},
        column=column,
        pretrained=is_pretrained(col_meta),
        classes=classes,
        n_train=len(y["train"]),
        n_test=len(y["test"]),
        chance=float(np.bincount(y["test"], minlength=len(classes)).max() / len(y["test"])),
        extraction=cost,
        caches=[str(c.path) for c in caches.values()],
        provenance={
            "column": f"{column} ({col_meta.get('source', '')}), weights sha256 "
            f"{train.identity.get('weights_sha256', '')[:16]}…",
            "preprocessing": pre,
            "precision": train.identity.get("precision"),
            "caches": ", ".join(str(c.path) for c in caches.values()),
            "splits": splits,
            "validation": f"{results['protocol']['validation']} ({results['protocol']['n_val']} "
            "images), never trained on; the best method per shot count is chosen on it by "
            f"{results['protocol']['selection_metric'].replace('_', ' ')}",
            "shots": f"{shots}, {repeats} repeats (seeds {seed}..{seed + repeats - 1})",
            "heads": "; ".join(f"{h}: {head_kind(h).summary}" for h in head_names),
            "extraction": f"{cost['seconds']:.1f} s now ({cost['written']} images extracted, "
            f"{cost['reused']} reused from caches)",
            "versions": ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
        },
    )
    if scratch:  # the report says only what ran
        results["provenance"]["scratch"] = _scratch_text(cfg)
    for m in extra:
        results["provenance"][m] = ccfg.summary(m)
    if len(columns) > 1:
        results["columns"] = rank_columns(
            columns, results, specs=specs, arr=arr, roles=roles, heads=head_names,
            protocol=protocol, log=log,
            extract_all=lambda sp, column: _extract_all(
                sp, column=column, cache_dir=cache_dir, device=device, precision=precision,
                batch_size=batch_size, progress=progress, log=log,
            ),
        )  # fmt: skip
        results["provenance"]["columns"] = (
            f"{', '.join(columns)}: each extracted on its own, the heads on each on the same "
            "splits and labelled images; per column, the head chosen on validation"
        )
    folder = report_dir(out if out is not None else Path("reports") / name, force=force)
    test_ds, test_ids = arr["test"][3], arr["test"][2]
    thumb = scaled_preprocess(pre, THUMB)
    return write_report(
        results,
        folder,
        y_test=y["test"],
        test_features=arr["test"][1],
        load_images=lambda pos: load_images(test_ds, [test_ids[i] for i in pos], thumb),
    )


def _scratch_text(cfg) -> str:
    """The scratch model as configured: augmentation on or off as it actually runs (issue 16)."""
    aug = "with augmentation (random crops and flips)" if cfg.augment else "no augmentation"
    return (
        f"{cfg.channels} channels, {cfg.image_size} px, <= {cfg.epochs} epochs, early stopping "
        f"on a validation split carved from its training images, {aug}"
    )
