"""Shared fixtures: small real image files made on the fly, offline settings."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Never let a test wait on the network (huggingface_hub retries for ~50 s otherwise).
os.environ.setdefault("COLHEAD_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PY = sys.executable


def photo(seed: int, size=(48, 40), cls: int = 0) -> Image.Image:
    """A small RGB image whose colour depends on its class, so classes are separable."""
    rng = np.random.default_rng(seed)
    base = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]][cls % 3], dtype=float)
    arr = base + rng.normal(0, 30, (size[1], size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def write_image(path: Path, img: Image.Image, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt)
    return path


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A labelled folder: 3 classes x 4 images, JPEG and PNG mixed."""
    root = tmp_path / "imgs"
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(4):
            ext = "jpg" if i % 2 == 0 else "png"
            write_image(root / name / f"{name}{i}.{ext}", photo(10 * c + i, cls=c))
    return root


@pytest.fixture
def bigger_folder(image_folder) -> Path:
    """``image_folder`` with 8 more PNGs per class: 12 per class, enough to split and repeat."""
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(4, 12):
            write_image(image_folder / name / f"x{i}.png", photo(100 + 20 * c + i, cls=c))
    return image_folder


def broken_files(root: Path) -> dict[str, str]:
    """Write unreadable 'images' under root; return {relative path: expected reason words}."""
    root.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    photo(99, size=(64, 64)).save(buf, format="JPEG")
    (root / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    (root / "empty.jpg").write_bytes(b"")
    (root / "text.jpg").write_text("this is not an image\n")
    return {"truncated.jpg": "decode", "empty.jpg": "empty", "text.jpg": "not an image"}
