"""File sources: ``folder:PATH`` (one sub-folder per class, or flat) and ``csv:FILE``.

Items are files, read with the guarded reader; ids are paths relative to the folder (or to the
CSV's folder), in sorted order, which is what makes resume exact.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ._source import Dataset, is_split_name, pick_split, refuse_split, safe_id, with_query

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def _images_under(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow dir symlinks: no loops
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_EXTS:
                out.append(Path(dirpath) / fn)
    return sorted(out, key=lambda p: os.fsencode(p))


def _loose_images(d: Path) -> list[str]:
    return sorted(
        p.name
        for p in d.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTS
    )


def _subdirs(d: Path, root: Path, ignored: list[str]) -> list[Path]:
    """Sub-folders of ``d``, except hidden ones and links that lead out of ``root``.

    A symlinked class folder pointing elsewhere (``cat -> /home/me``) would pull a whole other
    tree into the data set (issue 13); links inside the tree are followed.
    """
    out = []
    for x in sorted(d.iterdir(), key=lambda x: os.fsencode(x.name)):
        if x.name.startswith(".") or not x.is_dir():
            continue
        if x.is_symlink() and not x.resolve().is_relative_to(root):
            ignored.append(safe_id(os.path.relpath(x, root)))
            continue
        out.append(x)
    return out


def _classes(d: Path, root: Path, ignored: list[str]):
    """(paths, labels or None, classes) of a folder of class folders, or of a flat folder."""
    labelled = [c for c in _subdirs(d, root, ignored) if _images_under(c)]
    if not labelled:
        return _images_under(d), None, []
    loose = _loose_images(d)
    if loose:  # issue 11: they used to be dropped without a word
        raise ValueError(
            f"{d} has {len(loose)} image(s) at its top level beside class folders "
            f"(e.g. {safe_id(loose[0])!r}), which would have no class. Move them into a class "
            "folder (or delete them), or list the files you want with csv:FILE."
        )
    paths, labels = [], []
    for c in labelled:
        found = _images_under(c)
        paths += found
        labels += [safe_id(c.name)] * len(found)
    return paths, labels, [safe_id(c.name) for c in labelled]


def folder(arg: str, split: str | None) -> Dataset:
    """``folder:PATH``: class folders (``PATH/cat/x.jpg``), a flat folder, or split folders
    (``PATH/{train,val,test}/cat/x.jpg``, selected with ``--split``)."""
    if not arg:
        raise ValueError("folder: needs a path, e.g. folder:/data/flowers.")
    root = Path(arg).expanduser().resolve()
    if not root.is_dir():
        raise FileNotFoundError(f"No folder at {root} (from --data folder:{arg}).")
    ignored: list[str] = []
    subdirs = _subdirs(root, root, ignored)
    splits = {d.name: d for d in subdirs if is_split_name(d.name)}
    if not splits:
        refuse_split(f"folder:{root}", split, "no train/, val/ or test/ sub-folder")
        paths, labels, classes = _classes(root, root, ignored)
        spec = f"folder:{root}"
    else:
        others = [d.name for d in subdirs if d.name not in splits and _images_under(d)]
        if others or _loose_images(root):
            what = f"folders {', '.join(others[:5])}" if others else "images at its top level"
            raise ValueError(
                f"{root} has split folders ({', '.join(splits)}) and also {what}; put every "
                "class folder inside a split folder (or point folder: at one split folder)."
            )
        names = list(splits)
        chosen = pick_split(f"folder:{root}", split, names)
        parts = [
            _classes(splits[n], root, ignored) for n in (names if chosen == "all" else [chosen])
        ]
        if len({lab is None for _, lab, _ in parts}) > 1:
            raise ValueError(f"{root}: some splits have class folders and some do not.")
        paths = [x for p, _, _ in parts for x in p]
        labels = None if parts[0][1] is None else [x for _, lab, _ in parts for x in lab]
        classes = sorted({c for _, _, cls in parts for c in cls})
        spec = f"folder:{root}?split={chosen}"
    if not paths:
        raise ValueError(f"No image files ({', '.join(sorted(IMAGE_EXTS))}) under {root}.")
    ids = [safe_id(os.path.relpath(p, root)) for p in paths]
    info = {"ignored_links": sorted(set(ignored))[:10]} if ignored else {}
    return Dataset(spec, ids, labels, classes, paths=paths, info=info)


def csv_list(
    arg: str,
    split: str | None,
    *,
    allow_absolute: bool = False,
    path_col: str | None = None,
    label_col: str | None = None,
    split_col: str | None = None,
) -> Dataset:
    """``csv:FILE``: a header row, then one image per line (path, optional label and split)."""
    file = Path(arg).expanduser().resolve()
    if not file.is_file():
        raise FileNotFoundError(f"No CSV file at {file} (from --data csv:{arg}).")
    base = file.parent
    want_path, want_label = path_col or "path", label_col or "label"
    # utf-8-sig: spreadsheets save CSV with a byte-order mark, which would hide 'path'.
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            cols = [c.strip() for c in (reader.fieldnames or [])]
            wanted = [(None, want_path), ("label-col", label_col), ("split-col", split_col)]
            missing = [repr(c) for _, c in wanted if c is not None and c not in cols]
            if missing:
                raise ValueError(
                    f"{file} has no {' or '.join(missing)} column in its header row; found "
                    f"columns: {cols or 'none'}. A CSV list needs a header row with a 'path' "
                    "column (and optionally 'label'), or --path-col/--label-col/--split-col."
                )
            rows = []
            for r in reader:
                if None in r:  # more fields than the header: DictReader files them under None
                    raise ValueError(
                        f"{file}, line {reader.line_num}: {len(cols) + len(r[None])} fields "
                        f"where the header has {len(cols)}; a value that holds a comma must be "
                        'in double quotes ("a, b").'
                    )
                rows.append(
                    (reader.line_num, {(k or "").strip(): (v or "").strip() for k, v in r.items()})
                )
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{file} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
            "save it as UTF-8."
        ) from None
    except csv.Error as e:
        raise ValueError(f"{file} is not a readable CSV file: {e}.") from None
    where = f"csv:{file}"
    if split_col is None:
        refuse_split(where, split, "pass --split-col NAME to read splits from a column")
        chosen = None
    else:
        names = sorted({r[split_col] for _, r in rows if r.get(split_col)})
        chosen = pick_split(where, split, names or ["(none)"])
        if chosen != "all":
            rows = [(n, r) for n, r in rows if r.get(split_col) == chosen]
    has_label = want_label in cols
    paths, ids, labels = [], [], []
    for lineno, r in rows:
        raw = r.get(want_path, "")
        if not raw:
            raise ValueError(f"{file}, line {lineno}: empty path.")
        if "\0" in raw or "\0" in r.get(want_label, ""):
            raise ValueError(f"{file}, line {lineno}: contains a NUL byte.")
        p = Path(raw)
        full = (p if p.is_absolute() else base / p).resolve()
        if not allow_absolute and (p.is_absolute() or not full.is_relative_to(base)):
            raise ValueError(
                f"{file}, line {lineno}: path {raw!r} points outside the CSV's folder {base}. "
                "Pass allow_absolute=True (--allow-absolute) to allow that on purpose."
            )
        if has_label and not r.get(want_label):
            raise ValueError(f"{file}, line {lineno}: missing label for {raw!r}.")
        paths.append(full)
        ids.append(
            safe_id(raw if allow_absolute and p.is_absolute() else os.path.relpath(full, base))
        )
        labels.append(r[want_label] if has_label else None)
    if not paths:
        raise ValueError(f"{file} lists no images" + (f" in split {chosen!r}." if chosen else "."))
    if len(set(ids)) != len(ids):
        raise ValueError(f"{file} lists the same path more than once.")
    classes = sorted(set(labels)) if has_label else []
    spec = with_query(
        where,
        {"path_col": path_col, "label_col": label_col, "split_col": split_col, "split": chosen},
    )
    return Dataset(spec, ids, labels if has_label else None, classes, paths=paths)
