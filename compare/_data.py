"""What a comparison runs on: its splits, its name, its report folder, its raw images.

A comparison needs a training and a test split (and may use a validation split). They come from:
- ``--train-data SPEC --test-data SPEC`` (and optionally ``--val-data SPEC``);
- a built-in data set with splits (digits, elpv, fashion-mnist, flowers102);
- a folder laid out ``ROOT/{train,val|validation,test}/<class>/`` (the Hugging Face imagefolder
  convention): ``folder:ROOT`` with ``split`` reads each;
- anything else: one labelled data set, split here (seeded, stratified).
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np

# Built-in data sets with train/test splits, and the name of their validation split if any.
SPLIT_DATASETS = {"digits": None, "elpv": None, "fashion-mnist": None, "flowers102": "val"}
VAL_DIRS = ("val", "validation", "valid")
SPLITS = ("train", "test", "all", *VAL_DIRS)
REPORT_FILES = ("report.md", "results.json")


def split_folder(spec: str) -> dict[str, Path] | None:
    """``{"train": ..., "test": ..., "val"?: ...}`` when ``folder:ROOT`` has split sub-folders."""
    kind, _, arg = spec.partition(":")
    if kind != "folder" or not arg:
        return None
    root = Path(arg).expanduser()
    if not ((root / "train").is_dir() and (root / "test").is_dir()):
        return None
    out = {"train": root / "train", "test": root / "test"}
    for name in VAL_DIRS:
        if (root / name).is_dir():
            out["val"] = root / name
            break
    return out


def resolve_specs(
    data: str | None,
    *,
    train_data: str | None = None,
    test_data: str | None = None,
    val_data: str | None = None,
    train_split: str = "train",
    test_split: str = "test",
) -> dict[str, tuple[str, str | None]]:
    """``{role: (spec, split)}`` for the roles "train", "test" and maybe "val"; or "all" alone.

    Cheap: reads folder names only, loads nothing.
    """
    if train_data or test_data:
        if not (train_data and test_data):
            raise ValueError(
                "--train-data and --test-data go together; got only "
                f"{'--train-data' if train_data else '--test-data'}. Give both, or --data alone."
            )
        if data:
            raise ValueError(
                f"--data {data!r} and --train-data/--test-data both name the data; give one."
            )
        out = {"train": (train_data, None), "test": (test_data, None)}
        return out | ({"val": (val_data, None)} if val_data else {})
    if not data:
        raise ValueError("No data given: pass --data SPEC, or --train-data and --test-data.")
    if val_data:
        raise ValueError("--val-data needs --train-data and --test-data beside it.")
    kind, _, arg = data.partition(":")
    if kind in SPLIT_DATASETS:
        out = {"train": (data, train_split), "test": (data, test_split)}
        val = SPLIT_DATASETS[kind]
        return out | ({"val": (data, val)} if val else {})
    folders = split_folder(data)
    if folders:  # folder: reads one split of ROOT with --split (the same cache as extract's)
        return {role: (data, path.name) for role, path in folders.items()}
    return {"all": (data, None)}


def data_name(spec: str) -> str:
    """A short, file-safe name of a data spec: the folder's name, the CSV's stem, the built-in's.

    A split folder (``ROOT/train``) is named after ROOT; ``elpv:binary`` is ``elpv-binary``.
    """
    kind, _, arg = spec.partition("?")[0].partition(":")  # normalised specs add ?options
    if kind == "folder" and arg:
        p = Path(arg.rstrip("/\\")).expanduser()
        name = p.parent.name if p.name.lower() in ("train", "test", *VAL_DIRS) else p.name
        name = name or p.resolve().name
    elif kind == "csv" and arg:
        name = Path(arg).stem
    else:
        task = [a for a in arg.split(":") if a and a not in SPLITS]  # elpv:defect:test
        name = "-".join([kind, *task]) if kind in SPLIT_DATASETS else kind
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "data"


def report_dir(out: str | Path, *, force: bool = False) -> Path:
    """The folder to write a report in: ``out`` if new or empty; with ``force``, ``out`` with
    its old report removed; else the first free ``out-2``, ``out-3``, ... beside it."""
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return out
    if not out.is_dir():
        raise FileExistsError(f"--out {out} is a file; give a folder for the report.")
    if force:
        others = [p.name for p in out.iterdir() if not _is_report_file(p)]
        if others:
            raise FileExistsError(
                f"--force would replace the report in {out}, but it also holds files that are "
                f"not part of a report ({', '.join(sorted(others)[:3])}); choose another --out."
            )
        shutil.rmtree(out)
        return out
    k = 2
    while (out.parent / f"{out.name}-{k}").exists():
        k += 1
    return out.parent / f"{out.name}-{k}"


def _is_report_file(p: Path) -> bool:
    return p.is_file() and (p.name in REPORT_FILES or p.suffix == ".png")


def is_pretrained(column_meta: dict) -> bool:
    """Whether a cache's column metadata describes trained weights (``tiny`` is random init).

    A spec may say so itself (``pretrained``); otherwise random init is recognised by its
    weights id or source, as the column registry writes them ("random-seed0", "random init").
    """
    if "pretrained" in column_meta:
        return bool(column_meta["pretrained"])
    ident = f"{column_meta.get('weights_id', '')} {column_meta.get('source', '')}".lower()
    return "random" not in ident


def scaled_preprocess(preprocess: dict, size: int):
    """The column's own preprocessing (as recorded in its cache), scaled to ``size`` pixels.

    Same geometry (short side resized, centre crop of the same fraction) and interpolation, so
    the scratch model and the misclassified examples see what the column saw.
    """
    from ..extract import Preprocess

    pre = Preprocess(**{k: tuple(v) if isinstance(v, list) else v for k, v in preprocess.items()})
    return dataclasses.replace(
        pre, resize=max(size, round(size * pre.resize / pre.crop)), crop=size
    )


def load_images(ds, ids, pre) -> np.ndarray:
    """The images of ``ids`` in ``ds`` as uint8 (N, crop, crop, 3), preprocessed by ``pre``."""
    from ..extract import decode, from_array

    pos = {id_: i for i, id_ in enumerate(ds.ids)}
    out = np.empty((len(ids), pre.crop, pre.crop, 3), np.uint8)
    for k, id_ in enumerate(ids):
        content = ds.read(pos[id_])
        out[k] = decode(content, pre) if isinstance(content, bytes) else from_array(content, pre)
    return out
