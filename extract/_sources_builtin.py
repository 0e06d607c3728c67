"""Built-in data sets: scikit-learn's digits, elpv, Fashion-MNIST and Oxford Flowers-102.

Each builder takes ``(arg, split)`` and returns a Dataset whose ids are stable across runs
(``dataset:split:index`` or the file's relative path) and whose splits are fixed (seeded).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ._source import Dataset


def check_split(name: str, split: str, allowed) -> None:
    if split not in allowed:
        raise ValueError(
            f"Dataset {name} has no split {split!r}; choose from {', '.join(allowed)}."
        )


def _stratified(labels: np.ndarray, test_size: float, split: str, seed: int = 0) -> np.ndarray:
    if split == "all":
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    tr, te = train_test_split(
        np.arange(len(labels)), test_size=test_size, stratify=labels, random_state=seed
    )
    return np.sort(tr if split == "train" else te)


def digits(arg: str, split: str | None) -> Dataset:
    split = split or "all"
    check_split("digits", split, ("train", "test", "all"))
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


def elpv(arg: str, split: str | None) -> Dataset:
    task, split = arg or "defect", split or "all"
    if task not in ELPV_TASKS:
        raise ValueError(f"elpv has no task {task!r}; choose from {', '.join(ELPV_TASKS)}.")
    check_split("elpv", split, ("train", "test", "all"))
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


def fashion_mnist(arg: str, split: str | None) -> Dataset:
    split = split or "train"
    check_split("fashion-mnist", split, ("train", "test"))
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


def flowers102(arg: str, split: str | None) -> Dataset:
    split = split or "train"
    check_split("flowers102", split, ("train", "val", "test"))
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
