"""Shared pieces of the benchmarks: generated and real images, "the usual way", side-by-side timing.

Every benchmark measures its alternatives in one run, interleaved (A B A B ...), and reports the
median of each, because other processes share this machine's cores and absolute timings drift.
"""

from __future__ import annotations

import io
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

os.environ.setdefault("COLHEAD_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


# -- images --------------------------------------------------------------------------------------
def photo_like(seed: int, width: int = 2000, height: int = 1500) -> np.ndarray:
    """A smooth, photo-like RGB array: a few colour blobs upsampled bicubically, plus fine noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = (rng.random((9, 12, 3)) * 255).astype(np.uint8)
    img = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    noisy = img.astype(np.int16) + rng.integers(-6, 7, img.shape, dtype=np.int16)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def write_jpegs(folder: Path, n: int, size=(2000, 1500), quality: int = 90) -> list[Path]:
    """``n`` photo-like JPEGs in two class sub-folders (so they form a labelled folder dataset)."""
    from PIL import Image

    paths = []
    for i in range(n):
        p = folder / f"c{i % 2}" / f"img{i:04d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo_like(i, *size)).save(p, "JPEG", quality=quality)
        paths.append(p)
    return paths


def folder_dataset(folder: Path):
    from colhead.extract import parse_dataset

    return parse_dataset(f"folder:{folder}")


def elpv_subset(split: str, n: int | None, seed: int = 0, task: str = "defect"):
    """A seeded random subset (kept in dataset order) of elpv's train or test split."""
    from colhead.extract import Dataset, parse_dataset

    ds = parse_dataset(f"elpv:{task}", split=split)
    if n is None or n >= len(ds):
        return ds
    keep = np.sort(np.random.default_rng(seed).choice(len(ds), n, replace=False))
    return Dataset(
        spec=f"{ds.spec}:subset{n}:seed{seed}",
        ids=[ds.ids[i] for i in keep],
        labels=[ds.labels[i] for i in keep],
        classes=ds.classes,
        paths=[ds.paths[i] for i in keep],
        info=ds.info,
    )


# -- the usual way: PIL, torchvision transforms, DataLoader, fp32 -----------------------------
class UsualImages:
    """What a tutorial does: ``Image.open(path).convert("RGB")`` and a torchvision Compose."""

    def __init__(self, paths, labels, pre):
        from torchvision import transforms as T

        interp = {
            "bicubic": T.InterpolationMode.BICUBIC,
            "bilinear": T.InterpolationMode.BILINEAR,
            "nearest": T.InterpolationMode.NEAREST,
        }[pre.interpolation]
        self.paths, self.labels = list(paths), list(labels)
        self.transform = T.Compose(
            [
                T.Resize(pre.resize, interpolation=interp),
                T.CenterCrop(pre.crop),
                T.ToTensor(),
                T.Normalize(pre.mean, pre.std),
            ]
        )

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image

        with Image.open(self.paths[i]) as im:
            return self.transform(im.convert("RGB")), self.labels[i]


def usual_model(column: str = "efficientnet_lite0"):
    """The same timm model and weights colhead uses, in eval mode, fp32, default memory format."""
    from colhead.extract import get_column

    model, _, _ = get_column(column).build(None)
    return model.eval()


def usual_loader(ds, column: str = "efficientnet_lite0", batch_size: int = 32, workers: int = 2):
    import torch

    from colhead.extract import get_column

    pre = get_column(column).preprocess
    return torch.utils.data.DataLoader(
        UsualImages(ds.paths, range(len(ds)), pre),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
    )


def usual_extract(ds, column: str = "efficientnet_lite0", batch_size: int = 32, workers: int = 2):
    """Vectors of every item of ``ds`` the usual way; the model is built inside (timed) too."""
    import torch

    model = usual_model(column)
    out = []
    with torch.no_grad():
        for x, _ in usual_loader(ds, column, batch_size, workers):
            out.append(model(x).numpy())
    return np.concatenate(out)


def colhead_extract(ds, out: Path, **kwargs):
    """colhead's extractor with default settings into a fresh cache; returns (features, result)."""
    import colhead
    from colhead.cache import open_cache

    if out.exists():
        out.unlink()
    res = colhead.extract("efficientnet_lite0", ds, out=out, progress=False, **kwargs)
    cache = open_cache(out, require_complete=True)
    pos = {id_: i for i, id_ in enumerate(cache.ids)}
    return cache.features[[pos[i] for i in ds.ids]], res


# -- measuring -------------------------------------------------------------------------------------
def interleaved(fns: dict[str, Callable], repeats: int, warmup: bool = False) -> dict[str, dict]:
    """Run each function in turn, ``repeats`` rounds (A B A B ...); seconds and last result.

    Returns {name: {"times": [...], "median": s, "result": last return value}}.
    """
    out = {k: {"times": [], "result": None} for k in fns}
    if warmup:
        for fn in fns.values():
            fn()
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            out[k]["result"] = fn()
            out[k]["times"].append(time.perf_counter() - t)
    for v in out.values():
        v["median"] = statistics.median(v["times"])
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    b = b.astype(np.float64)
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-300)


def machine() -> str:
    import platform

    import torch

    from colhead._device import cpu_has_bf16

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), native bf16: {cpu_has_bf16()}"
    )


def jpeg_bytes(arr: np.ndarray, quality: int = 90) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=quality)
    return buf.getvalue()


# -- camera-like JPEGs (issue 14): real photos at camera sizes ----------------------------------
CAMERA_SIZES = ((640, 480), (1600, 1200), (4000, 3000))


def write_camera_jpegs(folder: Path, n: int, mix=(0.6, 0.3, 0.1), quality: int = 90) -> list[Path]:
    """``n`` JPEGs cut from sklearn's two sample photos (real image statistics), resized to a mix
    of 640x480, 1600x1200 and 4000x3000, with sensor-like noise, in two class folders."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    srcs = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(0)
    counts = [round(n * m) for m in mix]
    counts[0] += n - sum(counts)
    sizes = [s for s, k in zip(CAMERA_SIZES, counts) for _ in range(k)]
    paths = []
    for i, (w, h) in enumerate(sizes):
        a = srcs[i % 2]
        ch, cw = int(a.shape[0] * rng.uniform(0.6, 1.0)), int(a.shape[1] * rng.uniform(0.6, 1.0))
        y, x = rng.integers(0, a.shape[0] - ch + 1), rng.integers(0, a.shape[1] - cw + 1)
        crop = a[y : y + ch, x : x + cw]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = np.asarray(Image.fromarray(np.ascontiguousarray(crop)).resize((w, h), Image.BICUBIC))
        noisy = img.astype(np.int16) + rng.integers(-4, 5, img.shape, dtype=np.int16)
        p = folder / f"c{i % 2}" / f"img{i:04d}.jpg"
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(p, "JPEG", quality=quality)
        paths.append(p)
    return paths


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.1f} / {five:.1f} / {fifteen:.1f} (1 / 5 / 15 min)"
