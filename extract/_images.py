"""Decode any image a user may have into the column's input, or say exactly why not.

Bad input is data, not a crash: every failure raises ``BadImage`` with a short reason that the
extractor records in the cache's ``/skipped`` table. Odd but valid images are converted:
CMYK, 16-bit, 1-bit, grey, palette, alpha (composited on white), EXIF rotation, animated (first
frame). Large JPEGs decode with PIL's draft mode, which lets libjpeg downscale in the DCT domain
(1/2, 1/4, 1/8) — about 5x faster on 2000x1500 photos than a full decode and resize.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

from ._columns import Preprocess

# PIL warns above ~89 MP and raises above twice that; colhead treats the warning level as the
# limit, since a 20000x20000 header in a 1 KB file is the classic decompression bomb.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# The formats colhead reads (those of the folder source's file suffixes). PIL would otherwise
# try ~40 more on any bytes, some with large attack surfaces or outside helpers (EPS runs
# Ghostscript when installed; FITS, PSD, ...); issue 13.
FORMATS = ("JPEG", "PNG", "BMP", "GIF", "TIFF", "WEBP", "PPM")
# 16-bit and 32-bit grey and float images: resized in their own mode, scaled to 8 bits after.
_HIGH_DEPTH = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# Up to this many pixels the whole image is resized, then cropped (the historic path, bit for
# bit); above it (a very long, thin image), only the crop region is resized.
_FULL_RESIZE_FACTOR = 4

_RESAMPLE = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


class BadImage(ValueError):
    """An item that cannot be turned into an image; the message is the recorded reason."""


def decode(data: bytes, pre: Preprocess, *, draft: bool = True) -> np.ndarray:
    """Bytes of an image file -> uint8 array (crop, crop, 3), preprocessed up to normalisation.

    Any failure is a ``BadImage`` with its reason: one bad image never fails a batch.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = img.size
            if w * h > MAX_PIXELS:
                raise BadImage(f"decompression bomb: {w}x{h} pixels exceeds {MAX_PIXELS}")
            if draft and img.format == "JPEG":
                scale = pre.resize / min(w, h)
                if scale < 0.5:  # only worth it when libjpeg can reduce by 2x or more
                    img.draft("RGB", (math.ceil(w * scale), math.ceil(h * scale)))
            img.load()
            img = _rgb_or_grey(img)
            if img.mode in _HIGH_DEPTH:
                # resize in the image's own mode first, then scale the small crop to 8 bits:
                # converting first cost ~30 bytes per pixel in float64 copies (issue 13)
                hi = img.getextrema()[1]
                return _rgb_array(_to_uint8(resize_crop(img, pre).astype(np.float32), hi))
            return _rgb_array(resize_crop(img, pre))
    except BadImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"decompression bomb: {e}") from None
    except Image.UnidentifiedImageError:
        raise BadImage(f"not an image in a format colhead reads ({', '.join(FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise BadImage(f"cannot decode: {str(e)[:200] or type(e).__name__}") from None
    except Exception as e:  # a plugin's bug or MemoryError: this image fails, not the batch
        raise BadImage(f"cannot decode: {type(e).__name__}: {str(e)[:160]}") from None


def from_array(arr: np.ndarray, pre: Preprocess) -> np.ndarray:
    """An in-memory image (H, W) grey or (H, W, 3) RGB, any numeric dtype -> preprocessed uint8."""
    try:
        arr = np.asarray(arr)
        if arr.dtype != np.uint8:
            arr = _to_uint8(arr.astype(np.float32))  # float32, scaled in place: no float64 copy
        if arr.ndim == 2:
            img = Image.fromarray(arr, "L")
        elif arr.ndim == 3 and arr.shape[2] == 3:
            img = Image.fromarray(arr, "RGB")
        else:
            raise BadImage(f"array of shape {arr.shape} is not an image")
        return _rgb_array(resize_crop(img, pre))
    except BadImage:
        raise
    except Exception as e:  # as in decode: this image fails, not the batch
        raise BadImage(f"cannot convert the array: {type(e).__name__}: {str(e)[:160]}") from None


def _to_uint8(a: np.ndarray, hi: float | None = None) -> np.ndarray:
    """Scale a float32 array to 0..255 in place: [0, 1] floats, 16-bit, or wider by its max.

    ``hi`` is the whole image's maximum when ``a`` is only its crop.
    """
    np.nan_to_num(a, copy=False)
    if hi is None:
        hi = float(a.max()) if a.size else 0.0
    hi = float(hi) if math.isfinite(hi) else float(np.finfo(np.float32).max)
    if hi <= 1.0:
        a *= 255.0
    elif hi > 255.0:
        a *= 255.0 / 65535.0 if hi <= 65535 else 255.0 / hi
    np.rint(a, out=a)
    np.clip(a, 0, 255, out=a)
    return a.astype(np.uint8)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB, upright, first frame; alpha composited on white."""
    img = _rgb_or_grey(img)
    if img.mode in _HIGH_DEPTH:
        img = Image.fromarray(_to_uint8(np.array(img, dtype=np.float32)), "L")
    return img.convert("RGB") if img.mode == "L" else img


def _rgb_or_grey(img: Image.Image) -> Image.Image:
    """As ``to_rgb``, but grey images stay "L": resizing one band instead of three (PIL works on
    4-byte RGBX pixels) makes elpv-like grey images decode ~1.5x faster, with the same bytes."""
    img = ImageOps.exif_transpose(img) or img
    mode = img.mode
    if mode in _HIGH_DEPTH:
        return img  # decode resizes it in this mode; to_rgb scales it here
    if mode in ("L", "1"):
        return img.convert("L") if mode == "1" else img
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, img).convert("RGB")
    return img.convert("RGB") if img.mode != "RGB" else img


def _rgb_array(arr: np.ndarray) -> np.ndarray:
    """(c, c) grey -> (c, c, 3): every band of a grey image converted to RGB is the grey value."""
    return np.repeat(arr[:, :, None], 3, axis=2) if arr.ndim == 2 else arr


def resize_crop(img: Image.Image, pre: Preprocess) -> np.ndarray:
    """Resize the short side to ``pre.resize``, centre-crop ``pre.crop`` (as torchvision does).

    Returns (crop, crop, 3) for RGB images and (crop, crop) for single-band ones, in the image's
    own dtype (uint8, or uint16/int32/float32 for high-depth modes).

    The resized image is never built whole when it would be much bigger than the crop: a 1x2000
    PNG of 84 bytes resized to a short side of 256 is 256x512000 (~150 MiB) before cropping
    (issue 13). Then only the crop region is resized, from its box in source coordinates, which
    samples the same source points with the same filter as resizing everything.
    """
    w, h = img.size
    if w < 1 or h < 1:
        raise BadImage(f"image has no pixels ({w}x{h})")
    scale = pre.resize / min(w, h)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    c = pre.crop
    left, top = int(round((nw - c) / 2.0)), int(round((nh - c) / 2.0))
    resample = _RESAMPLE[pre.interpolation]
    gap = None if img.mode.startswith("I;16") else 3.0  # PIL cannot reduce() 16-bit images
    if nw * nh <= _FULL_RESIZE_FACTOR * c * c:
        if (nw, nh) != (w, h):
            # reducing_gap: PIL first reduces by an integer factor with a box filter, then
            # resamples; same result class as torchvision's antialiased resize, much faster.
            img = img.resize((nw, nh), resample, reducing_gap=gap)
        img = img.crop((left, top, left + c, top + c))  # pads with black if the image is smaller
        return np.asarray(img)
    x0, y0, x1, y1 = max(left, 0), max(top, 0), min(left + c, nw), min(top + c, nh)
    sx, sy = w / nw, h / nh  # source pixels per output pixel, as in the whole-image resize
    box = (x0 * sx, y0 * sy, x1 * sx, y1 * sy)
    region = img.resize((x1 - x0, y1 - y0), resample, box=box, reducing_gap=gap)
    if (x1 - x0, y1 - y0) != (c, c):  # the crop reaches past the image: black, as crop() pads
        canvas = Image.new(region.mode, (c, c))
        canvas.paste(region, (x0 - left, y0 - top))
        region = canvas
    return np.asarray(region)
