"""Datasets: what to extract, as an ordered list of items with stable ids.

Spec strings (``--data``):
    folder:PATH            one sub-folder per class, or a flat folder (no labels)
    csv:FILE               columns path[,label]; relative paths resolve against FILE's folder
    digits                 scikit-learn's 8x8 digits (splits: train, test, all)
    elpv[:TASK]            solar cells from the elpv-dataset package; TASK = defect (4 classes:
                           defect probability 0, 1/3, 2/3, 1; default), binary (p >= 0.5) or type
                           (mono/poly); splits: train, test (seeded 75/25 stratified), all
    fashion-mnist          Debian's /usr/share/datasets/fashion-mnist, else torchvision (splits:
                           train, test)
    flowers102[:ROOT]      torchvision's Oxford Flowers-102 layout (splits: train, val, test)

Every item has a stable id: the relative path for files, ``dataset:split:index`` otherwise.
Items come in a fixed order (sorted paths, or index), which is what makes resume exact.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# No image colhead decodes is larger: the pixel limit (_images.MAX_PIXELS, ~89 MP) at 16-bit
# RGBA uncompressed is ~720 MB. Reading a bigger file whole would only exhaust memory.
MAX_FILE_BYTES = 1 << 30
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
DATASETS = ("folder", "csv", "digits", "elpv", "fashion-mnist", "flowers102")


@dataclass
class Dataset:
    """An ordered list of items. ``paths`` xor ``arrays`` holds their content.

    Attributes:
        spec: normalised spec string, part of the cache identity.
        ids: stable item ids.
        labels: class name per item, or None for unlabelled data.
        classes: all class names, in order.
        paths: file per item (file datasets).
        arrays: image per item (in-memory datasets), uint8 or any numeric dtype.
    """

    spec: str
    ids: list[str]
    labels: list[str] | None
    classes: list[str]
    paths: list[Path] | None = None
    arrays: np.ndarray | None = None
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def stat(self, i: int) -> tuple[int, int]:
        """(size, mtime_ns) of a file item; (0, 0) for in-memory items. Cheap change detection."""
        if self.paths is None:
            return (0, 0)
        try:
            st = os.stat(self.paths[i])
            return (int(st.st_size), int(st.st_mtime_ns))
        except OSError:
            return (-1, -1)

    def read(self, i: int):
        """Raw content: bytes of the file, or the array. Raises OSError for unreadable files."""
        if self.paths is not None:
            # O_NONBLOCK: opening a named pipe must not wait for a writer that never comes;
            # the check below then refuses it, and devices (a link to /dev/zero never ends).
            fd = os.open(self.paths[i], os.O_RDONLY | os.O_NONBLOCK)
            with open(fd, "rb") as f:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)")
                if st.st_size > MAX_FILE_BYTES:
                    raise OSError(errno.EFBIG, f"{st.st_size} bytes, more than any decodable image")
                return f.read()
        return self.arrays[i]

    def content_hash(self, content) -> str:
        if isinstance(content, (bytes, bytearray)):
            return hashlib.sha256(content).hexdigest()
        a = np.ascontiguousarray(content)
        h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
        return h.hexdigest()


def parse_dataset(spec: str, *, split: str | None = None, allow_absolute: bool = False) -> Dataset:
    """Build a Dataset from a spec string. Cheap checks only: no model, no decoding.

    Raises:
        ValueError: unknown dataset kind, bad split or malformed CSV.
        FileNotFoundError: a folder or file that does not exist.
    """
    kind, _, arg = spec.partition(":")
    if kind == "folder":
        return _folder(arg)
    if kind == "csv":
        return _csv(arg, allow_absolute=allow_absolute)
    if kind == "digits":
        return _digits(split or "all")
    if kind == "elpv":
        return _elpv(arg or "defect", split or "all")
    if kind == "fashion-mnist":
        return _fashion_mnist(split or "train")
    if kind == "flowers102":
        return _flowers102(arg, split or "train")
    import difflib

    close = difflib.get_close_matches(kind, DATASETS, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unknown dataset {spec!r}.{hint} Use one of: folder:PATH, csv:FILE, digits, "
        "elpv[:defect|binary|type], fashion-mnist, flowers102[:ROOT]."
    )


def _check_split(name: str, split: str, allowed) -> None:
    if split not in allowed:
        raise ValueError(
            f"Dataset {name} has no split {split!r}; choose from {', '.join(allowed)}."
        )


def _safe_id(rel: str) -> str:
    # Non-UTF-8 file names come back from os.walk with surrogate escapes; HDF5 stores UTF-8, so
    # ids spell undecodable bytes as \xNN while the real path is kept for reading.
    return os.fsencode(rel).decode("utf-8", "backslashreplace")


def _images_under(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):  # does not follow dir symlinks: no loops
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fn in filenames:
            if not fn.startswith(".") and Path(fn).suffix.lower() in IMAGE_EXTS:
                out.append(Path(dirpath) / fn)
    return sorted(out, key=lambda p: os.fsencode(p))


def _folder(arg: str) -> Dataset:
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
            labels += [_safe_id(d.name)] * len(files)
        classes = [_safe_id(d.name) for d in labelled]
    else:
        paths = _images_under(root)
        labels, classes = None, []
    if not paths:
        raise ValueError(f"No image files ({', '.join(sorted(IMAGE_EXTS))}) under {root}.")
    ids = [_safe_id(os.path.relpath(p, root)) for p in paths]
    return Dataset(f"folder:{root}", ids, labels, classes, paths=paths)


def _csv(arg: str, *, allow_absolute: bool) -> Dataset:
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
            _safe_id(raw if allow_absolute and p.is_absolute() else os.path.relpath(full, base))
        )
        labels.append(r["label"] if has_label else None)
    if not paths:
        raise ValueError(f"{file} lists no images.")
    if len(set(ids)) != len(ids):
        raise ValueError(f"{file} lists the same path more than once.")
    classes = sorted(set(labels)) if has_label else []
    return Dataset(f"csv:{file}", ids, labels if has_label else None, classes, paths=paths)


def _stratified(labels: np.ndarray, test_size: float, split: str, seed: int = 0) -> np.ndarray:
    if split == "all":
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    return np.sort(tr if split == "train" else te)


def _digits(split: str) -> Dataset:
    _check_split("digits", split, ("train", "test", "all"))
    from sklearn.datasets import load_digits

    d = load_digits()
    idx = _stratified(d.target, 0.25, split)
    images = (d.images[idx] * (255.0 / 16.0)).round().astype(np.uint8)
    classes = [str(c) for c in range(10)]
    return Dataset(
        f"digits:{split}",
        [f"digits:{split}:{i}" for i in idx],
        [classes[t] for t in d.target[idx]],
        classes,
        arrays=images,
        info={"source": "scikit-learn load_digits (8x8 grey)"},
    )


ELPV_TASKS = ("defect", "binary", "type")


def _elpv(task: str, split: str) -> Dataset:
    if task not in ELPV_TASKS:
        raise ValueError(f"elpv has no task {task!r}; choose from {', '.join(ELPV_TASKS)}.")
    _check_split("elpv", split, ("train", "test", "all"))
    import importlib.util

    spec = importlib.util.find_spec("elpv_dataset")
    if spec is None:
        raise FileNotFoundError(
            "Dataset elpv needs the elpv-dataset package: pip install 'colhead[demo]'."
        )
    base = Path(spec.origin).parent / "data"
    rec = np.genfromtxt(base / "labels.csv", dtype=["U32", "f8", "U8"], names=["path", "p", "type"])
    if task == "defect":
        classes = ["p0.00", "p0.33", "p0.67", "p1.00"]
        lab = np.rint(rec["p"] * 3).astype(int)
    elif task == "binary":
        classes = ["functional", "defective"]
        lab = (rec["p"] >= 0.5).astype(int)
    else:
        classes = ["mono", "poly"]
        lab = (rec["type"] == "poly").astype(int)
    idx = _stratified(lab, 0.25, split)
    paths = [base / rec["path"][i] for i in idx]
    return Dataset(
        f"elpv:{task}:{split}",
        [str(rec["path"][i]) for i in idx],
        [classes[lab[i]] for i in idx],
        classes,
        paths=paths,
        info={"source": "elpv-dataset (CC-BY-NC-SA 4.0), 300x300 grey EL images", "task": task},
    )


DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip


def _fashion_mnist(split: str) -> Dataset:
    _check_split("fashion-mnist", split, ("train", "test"))
    prefix = "train" if split == "train" else "t10k"
    img_f = _first_existing(DEBIAN_FASHION, f"{prefix}-images-idx3-ubyte")
    lab_f = _first_existing(DEBIAN_FASHION, f"{prefix}-labels-idx1-ubyte")
    if img_f and lab_f:
        images, labels = _read_idx(img_f), _read_idx(lab_f)
        source = str(DEBIAN_FASHION)
    else:
        import torchvision

        root = Path(os.environ.get("COLHEAD_DATA", Path.home() / ".cache" / "colhead" / "data"))
        try:
            ds = torchvision.datasets.FashionMNIST(root, train=split == "train", download=True)
        except Exception as e:
            raise FileNotFoundError(
                "Fashion-MNIST is not installed and could not be downloaded "
                f"({str(e)[:120]}). Install Debian's dataset-fashion-mnist package."
            ) from None
        images, labels = ds.data.numpy(), ds.targets.numpy()
        source = "torchvision"
    return Dataset(
        f"fashion-mnist:{split}",
        [f"fashion-mnist:{split}:{i}" for i in range(len(labels))],
        [FASHION_CLASSES[t] for t in labels],
        list(FASHION_CLASSES),
        arrays=images,
        info={"source": source},
    )


def _first_existing(base: Path, stem: str) -> Path | None:
    for p in (base / stem, base / (stem + ".gz")):
        if p.is_file():
            return p
    return None


def _read_idx(path: Path) -> np.ndarray:
    import gzip

    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _flowers102(arg: str, split: str) -> Dataset:
    _check_split("flowers102", split, ("train", "val", "test"))
    root = Path(arg or os.environ.get("COLHEAD_DATA", Path.home() / ".cache/colhead/data"))
    root = root.expanduser().resolve()
    base = root / "flowers-102"
    if not (base / "imagelabels.mat").is_file():
        import torchvision

        try:  # torchvision's own download, when online
            torchvision.datasets.Flowers102(str(root), split=split, download=True)
        except Exception as e:
            raise FileNotFoundError(
                f"Flowers-102 is not under {base} and could not be downloaded ({str(e)[:120]}). "
                "Pass flowers102:ROOT where ROOT/flowers-102 holds jpg/, imagelabels.mat and "
                "setid.mat."
            ) from None
    from scipy.io import loadmat

    # torchvision's split names: train=trnid, val=valid, test=tstid; labels are 1-based on disk.
    ids_ = loadmat(base / "setid.mat")[{"train": "trnid", "val": "valid", "test": "tstid"}[split]]
    image_ids = sorted(int(i) for i in np.ravel(ids_))
    all_labels = np.ravel(loadmat(base / "imagelabels.mat")["labels"]).astype(int) - 1
    classes = [f"{c:03d}" for c in range(102)]
    paths = [base / "jpg" / f"image_{i:05d}.jpg" for i in image_ids]
    return Dataset(
        f"flowers102:{split}",
        [f"jpg/image_{i:05d}.jpg" for i in image_ids],
        [classes[all_labels[i - 1]] for i in image_ids],
        classes,
        paths=paths,
        info={"source": str(base), "note": "labels 0-based (torchvision >= 0.13)"},
    )
