"""The images the scratch model takes, checked and made into tensors; its training augmentation.

Its input is the column's own preprocessing (issue 10: one implementation, in
``extract/_images.py``): uint8 images already resized and centre-cropped to ``image_size``, as
``compare`` loads them with extract's ``decode``/``from_array``. Here pixels are only scaled to
the ImageNet statistics (no learned or saved preprocessing state); nothing is resized.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split
from sklearn.utils.multiclass import check_classification_targets

# The workshop normalised every model's input with the ImageNet statistics; the scratch model
# keeps them so that uint8 input needs no learned preprocessing state (nothing to save).
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
_CHUNK = 256  # images converted to float at once: bounds the temporary copies


def check_images(X, size: int) -> np.ndarray:
    """A batch of preprocessed images: uint8 (N, S, S, 3) or (N, S, S), or float (N, 3, S, S).

    Greyscale uint8 gets a channel axis. Not sklearn's validate_data: it wants 2-D tables.
    """
    X = np.asarray(X)
    if X.ndim == 0 or len(X) == 0:
        raise ValueError(f"Expected a batch of images, got an array of shape {X.shape}.")
    if X.dtype == np.uint8:
        if X.ndim == 3:
            X = X[..., None]
        if X.ndim != 4 or X.shape[-1] not in (1, 3):
            raise ValueError(
                f"Expected uint8 images of shape (N, H, W, 3) or (N, H, W), got shape {X.shape}."
            )
        if X.shape[1:3] != (size, size):
            raise ValueError(
                f"Expected images of {size}x{size} pixels (image_size), got {X.shape[1]}x"
                f"{X.shape[2]}; preprocess them as the column does (compare.load_images, or "
                f"extract's decode/from_array with Preprocess({size}, {size}, ...)), or set "
                f"image_size={X.shape[1]} if they are square."
            )
    elif np.issubdtype(X.dtype, np.floating):
        if X.ndim != 4 or X.shape[1:] != (3, size, size):
            raise ValueError(
                f"Expected float images already normalised to shape (N, 3, {size}, {size}), "
                f"got shape {X.shape}; or pass uint8 images (N, {size}, {size}, 3)."
            )
    else:
        raise ValueError(f"Expected uint8 or float images, got dtype {X.dtype}.")
    return X


def to_tensor(X, size: int) -> torch.Tensor:
    """Checked images as normalised float32 (N, 3, size, size) on the CPU."""
    X = check_images(X, size)
    if X.dtype != np.uint8:
        if not np.isfinite(X).all():
            raise ValueError("The float images contain NaN or infinite values.")
        return torch.as_tensor(X, dtype=torch.float32)
    mean = torch.tensor(_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(_STD).view(1, 3, 1, 1)
    out = torch.empty(len(X), 3, size, size)
    for i in range(0, len(X), _CHUNK):
        x = torch.from_numpy(X[i : i + _CHUNK]).permute(0, 3, 1, 2).float() / 255
        out[i : i + _CHUNK] = (x.expand(-1, 3, -1, -1) - mean) / std  # grey -> 3 equal channels
    return out


def check_labels(y, n: int, x_name: str, y_name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{y_name} must be 1-D with one label per image, got shape {y.shape}.")
    if len(y) != n:
        raise ValueError(
            f"{x_name} has {n} images but {y_name} has {len(y)} labels; they must "
            f"be the same length."
        )
    check_classification_targets(y)
    return y


def split(y: np.ndarray, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation indices, stratified whenever every class can be split."""
    n_val = int(np.ceil(val_size * len(y)))
    counts = np.bincount(y)
    stratify = y if counts.min() >= 2 and len(counts) <= n_val <= len(y) - len(counts) else None
    idx = np.arange(len(y))
    tr, va = train_test_split(idx, test_size=n_val, random_state=seed, stratify=stratify)
    return np.sort(tr), np.sort(va)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and random crop with 1/8 zero padding, independently per image."""
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=gen) < 0.5
    x = torch.where(flip.view(n, 1, 1, 1), x.flip(3), x)
    p = max(1, h // 8)
    x = F.pad(x, (p, p, p, p))  # zeros = the mean colour after normalisation
    dy = torch.randint(0, 2 * p + 1, (n, 1), generator=gen) + torch.arange(h)
    dx = torch.randint(0, 2 * p + 1, (n, 1), generator=gen) + torch.arange(w)
    # One gather for the whole batch: index (n, h, w) positions, then move channels back.
    rows, cols = dy[:, :, None], dx[:, None, :]
    return x[torch.arange(n)[:, None, None], :, rows, cols].permute(0, 3, 1, 2)
