"""Batched JPEG decoding and the column's resize + centre crop on the device (issue 14, GPU).

On CUDA, ``torchvision.io.decode_jpeg(list, device="cuda")`` decodes a whole batch with nvJPEG;
the short-side resize and the centre crop then run on the GPU too, so the decode workers only
read bytes. The result is the same uint8 (B, crop, crop, 3) batch that ``_images.decode`` makes
on the CPU, and the column normalises it on the device with its own mean/std (``Embedder``).

Whatever this path does not handle exactly as ``_images.decode`` does goes to that decoder, one
image at a time, so bad images are skipped with the same reasons and odd ones (EXIF rotation,
CMYK, PNG, very long images, decompression bombs) come out as today. A header is read with PIL's
lazy ``Image.open`` (no pixels) to route each item; a decode error on the device falls back too.

Known differences from the CPU path (tests/test_gpu_decode.py measures them): the CPU path uses
PIL's resize with ``reducing_gap`` and libjpeg's DCT-domain draft scaling on large JPEGs; here the
full image is decoded and resized with torchvision's antialiased filter of the same kind. Pixels
differ by a few grey levels on average, the column's vectors by cosine > 0.99.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

from ._images import _FULL_RESIZE_FACTOR, MAX_PIXELS, BadImage, decode
from ._registry import Preprocess

DECODES = ("auto", "cpu", "gpu")
_EXIF_ORIENTATION = 0x0112


def resolve_decode(decode: str, device) -> bool:
    """Whether a run decodes JPEGs on the column's device: auto = on CUDA only, never on the CPU.

    ``gpu`` on a CPU device is allowed (torchvision's decoder then runs on the CPU: the same code
    path, used by the tests), but it is slower than the default CPU path with draft decoding.
    """
    if decode not in DECODES:
        raise ValueError(f"decode must be one of {', '.join(DECODES)}, got {decode!r}.")
    if decode == "auto":
        return device.type == "cuda"
    return decode == "gpu"


def device_friendly(data: bytes, pre: Preprocess) -> bool:
    """True when the bytes are a whole, plain RGB or grey JPEG that the device path decodes as
    ``_images.decode`` would: ending in its EOI marker, no EXIF rotation, no CMYK, within the
    pixel limit, not so long that the CPU path would resize only the crop region."""
    if data[:3] != b"\xff\xd8\xff" or data.rstrip(b"\x00")[-2:] != b"\xff\xd9":
        return False  # not a JPEG, or truncated (nvJPEG may not say so): the CPU decoder says why
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = Image.open(io.BytesIO(data), formats=("JPEG",))  # header only, no pixels
            w, h = img.size
            if img.mode not in ("RGB", "L") or w < 1 or h < 1 or w * h > MAX_PIXELS:
                return False
            if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
                return False
    except Exception:  # a broken header: the CPU decoder says why, with its reason
        return False
    nw, nh = _resized(w, h, pre)
    return nw * nh <= _FULL_RESIZE_FACTOR * pre.crop * pre.crop


def _resized(w: int, h: int, pre: Preprocess) -> tuple[int, int]:
    """The resized size, computed as ``_images.resize_crop`` does (round, not truncate)."""
    scale = pre.resize / min(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def resize_crop(img, pre: Preprocess):
    """uint8 (3, H, W) tensor on any device -> uint8 (crop, crop, 3), as ``_images.resize_crop``:
    short side to ``pre.resize`` with an antialiased filter, centre crop (black padding)."""
    import torch
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2 import functional as F

    mode = {
        "bilinear": InterpolationMode.BILINEAR,
        "bicubic": InterpolationMode.BICUBIC,
        "nearest": InterpolationMode.NEAREST,
    }[pre.interpolation]
    h, w = img.shape[-2:]
    nw, nh = _resized(w, h, pre)
    x = img
    if (nw, nh) != (w, h):
        # float in, round and clamp after: bicubic overshoots, and uint8 antialiased resize is
        # not implemented on every device
        x = F.resize(x.float(), [nh, nw], interpolation=mode, antialias=mode != "nearest")
        x = x.round_().clamp_(0, 255).to(torch.uint8)
    x = F.center_crop(x, [pre.crop, pre.crop])  # same offsets as PIL's: round((n - c) / 2)
    return x.permute(1, 2, 0)


def decode_batch(datas: list[bytes], pre: Preprocess, *, device, draft: bool = True):
    """Bytes of image files -> (uint8 (B_ok, crop, crop, 3) tensor on ``device``, reasons).

    ``reasons[i]`` is None where item ``i`` decoded (its row in the tensor is its rank among the
    good items) and the ``BadImage`` reason where it did not — the reason ``_images.decode``
    gives, since every item the device path cannot take is decoded there. An item that is
    already a preprocessed uint8 array (an in-memory data set's) passes through.
    """
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    out: list = [None] * len(datas)
    reasons: list[str | None] = [None] * len(datas)
    jpegs = [i for i, d in enumerate(datas) if isinstance(d, bytes) and device_friendly(d, pre)]
    if jpegs:
        batch = [torch.frombuffer(bytearray(datas[i]), dtype=torch.uint8) for i in jpegs]
        try:  # one call for the batch; one bad image fails it, so then one by one
            images = decode_jpeg(batch, mode=ImageReadMode.RGB, device=device)
        except Exception:
            images = [_decode_one(b, device) for b in batch]
        for i, img in zip(jpegs, images):
            if img is not None:
                out[i] = resize_crop(img, pre)
    for i, d in enumerate(datas):
        if isinstance(d, np.ndarray):
            out[i] = torch.from_numpy(d).to(device)
        elif out[i] is None:  # not for the device, or failed there: the CPU decoder decides
            try:
                out[i] = torch.from_numpy(decode(d, pre, draft=draft).copy()).to(device)
            except BadImage as e:
                reasons[i] = str(e)
    good = [t for t in out if t is not None]
    crop = pre.crop
    x = torch.stack(good) if good else torch.empty((0, crop, crop, 3), dtype=torch.uint8)
    return x, reasons


def _decode_one(data, device):
    from torchvision.io import ImageReadMode, decode_jpeg

    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except Exception:
        return None
