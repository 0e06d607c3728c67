"""File sources: ``folder:PATH`` (one sub-folder per class, or flat) and ``csv:FILE``.

Items are files, read with the guarded reader; ids are paths relative to the folder (or to the
CSV's folder), in sorted order, which is what makes resume exact.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ._source import Dataset, safe_id

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _images_under(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow dir symlinks: no loops
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_EXTS:
                out.append(Path(dirpath) / fn)
    return sorted(out, key=lambda p: os.fsencode(p))


def folder(arg: str, split: str | None) -> Dataset:
    if not arg:
        raise ValueError("folder: needs a path, e.g. folder:/data/flowers.")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"No folder at {root} (from --data folder:{arg}).")
    subdirs = sorted(
        (d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
        key=lambda d: d.name,
    )
    labelled = [d for d in subdirs if _images_under(d)]
    paths, labels = [], []
    if labelled:
        for d in labelled:
            files = _images_under(d)
            paths += files
            labels += [safe_id(d.name)] * len(files)
        classes = [safe_id(d.name) for d in labelled]
    else:
        paths = _images_under(root)
        labels, classes = None, []
    if not paths:
        raise ValueError(f"No image files ({', '.join(sorted(IMAGE_EXTS))}) under {root}.")
    ids = [safe_id(os.path.relpath(p, root)) for p in paths]
    return Dataset(f"folder:{root}", ids, labels, classes, paths=paths)


def csv_list(arg: str, split: str | None, *, allow_absolute: bool = False) -> Dataset:
    file = Path(arg).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"No CSV file at {file} (from --data csv:{arg}).")
    base = file.parent
    # utf-8-sig: spreadsheets save CSV with a byte-order mark, which would hide 'path'.
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            if "path" not in cols:
                raise ValueError(
                    f"{file} must have a header row with a 'path' column (and optionally "
                    f"'label'); found columns: {cols or 'none'}."
                )
            rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader]
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{file} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save it as UTF-8."
        ) from None
    except csv.Error as e:
        raise ValueError(f"{file} is not a readable CSV file: {e}.") from None
    has_label = "label" in cols
    paths, ids, labels = [], [], []
    for lineno, r in enumerate(rows, start=2):
        raw = r.get("path", "")
        if not raw:
            raise ValueError(f"{file}, line {lineno}: empty path.")
        if "\0" in raw or "\0" in r.get("label", ""):
            raise ValueError(f"{file}, line {lineno}: contains a NUL byte.")
        p = Path(raw)
        full = (p if p.is_absolute() else base / p).resolve()
        if not allow_absolute and (p.is_absolute() or not full.is_relative_to(base)):
            raise ValueError(
                f"{file}, line {lineno}: path {raw!r} points outside the CSV's folder {base}. "
                "Pass allow_absolute=True (--allow-absolute) to allow that on purpose."
            )
        if has_label and not r.get("label"):
            raise ValueError(f"{file}, line {lineno}: missing label for {raw!r}.")
        paths.append(full)
        ids.append(
            safe_id(raw if allow_absolute and p.is_absolute() else os.path.relpath(full, base))
        )
        labels.append(r["label"] if has_label else None)
    if not paths:
        raise ValueError(f"{file} lists no images.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{file} lists the same path more than once.")
    classes = sorted(set(labels)) if has_label else []
    return Dataset(f"csv:{file}", ids, labels if has_label else None, classes, paths=paths)
