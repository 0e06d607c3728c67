"""The bad-input corpus: every odd or broken image is converted or rejected with a reason."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from colhead.extract import BadImage, Preprocess, decode, from_array

PRE = Preprocess(36, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bilinear")


def enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def rgb(w=40, h=30, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def png_header_only(w: int, h: int) -> bytes:
    """A PNG that claims w x h pixels in a few bytes: the classic decompression bomb."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


CONVERTED = {
    "rgb_jpeg": lambda: enc(rgb(), "JPEG"),
    "grey_png": lambda: enc(rgb().convert("L"), "PNG"),
    "cmyk_jpeg": lambda: enc(rgb().convert("CMYK"), "JPEG"),
    "one_bit_png": lambda: enc(rgb().convert("1"), "PNG"),
    "palette_transparent_png": lambda: enc(rgb().convert("P"), "PNG", transparency=0),
    "rgba_png": lambda: enc(rgb().convert("RGBA"), "PNG"),
    "grey_alpha_png": lambda: enc(rgb().convert("LA"), "PNG"),
    "sixteen_bit_png": lambda: enc(
        Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16)), "PNG"
    ),
    "one_by_one_png": lambda: enc(rgb(1, 1), "PNG"),
    "animated_gif": lambda: enc(
        rgb().convert("P"), "GIF", save_all=True, append_images=[rgb(seed=1).convert("P")]
    ),
    "webp": lambda: enc(rgb(), "WEBP"),
    "bmp": lambda: enc(rgb(), "BMP"),
    "tiff": lambda: enc(rgb(), "TIFF"),
}


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_odd_but_valid_images_are_converted(kind):
    out = decode(CONVERTED[kind](), PRE)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8


REJECTED = {
    "zero_bytes": (lambda: b"", "empty file"),
    "text_named_jpg": (lambda: b"hello, I am text\n" * 10, "not an image"),
    "truncated_jpeg": (lambda: enc(rgb(200, 200), "JPEG")[:300], "cannot decode"),
    "truncated_png": (lambda: enc(rgb(200, 200), "PNG")[:200], "cannot decode"),
    "bomb_20000x20000": (lambda: png_header_only(20000, 20000), "decompression bomb"),
}


@pytest.mark.parametrize("kind", sorted(REJECTED))
def test_broken_images_are_rejected_with_a_reason(kind):
    make, reason = REJECTED[kind]
    with pytest.raises(BadImage, match=reason):
        decode(make(), PRE)


def test_sixteen_bit_keeps_its_range_instead_of_saturating():
    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    out = decode(enc(Image.fromarray(ramp), "PNG"), Preprocess(64, 64, (0,) * 3, (1,) * 3))
    assert out.min() < 10 and out.max() > 245 and len(np.unique(out)) > 100


def test_alpha_is_composited_on_white():
    img = Image.new("RGBA", (40, 40), (0, 0, 0, 0))  # fully transparent black
    assert decode(enc(img, "PNG"), PRE).min() == 255


def test_exif_rotation_is_applied():
    img = rgb(60, 20)  # landscape
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: upright it is portrait
    data = enc(img, "JPEG", exif=exif.tobytes())
    pre = Preprocess(20, 20, (0,) * 3, (1,) * 3)
    from colhead.extract._images import to_rgb

    assert to_rgb(Image.open(io.BytesIO(data))).size == (20, 60)
    assert decode(data, pre).shape == (20, 20, 3)


def test_draft_mode_matches_full_decode_on_large_jpegs():
    rng = np.random.default_rng(0)
    # smooth content (upsampled noise), like a photo: DCT-domain scaling is exact enough there
    small = rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)
    big = Image.fromarray(small).resize((2000, 1500), Image.Resampling.BICUBIC)
    data = enc(big, "JPEG", quality=90)
    pre = Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")
    fast, full = decode(data, pre, draft=True), decode(data, pre, draft=False)
    assert fast.shape == full.shape == (224, 224, 3)
    assert np.abs(fast.astype(int) - full.astype(int)).mean() < 3.0


@pytest.mark.parametrize(
    "arr", [np.zeros((8, 8), np.uint8), np.ones((8, 8)) * 16.0, np.zeros((5, 6, 3), np.uint16)]
)
def test_arrays_become_images(arr):
    assert from_array(arr, PRE).shape == (32, 32, 3)


def test_array_of_wrong_shape_is_rejected():
    with pytest.raises(BadImage, match="not an image"):
        from_array(np.zeros((4, 4, 4)), PRE)


@pytest.mark.parametrize("mode", ["L", "1", "I;16", "F"])
@pytest.mark.parametrize("pre", [PRE, Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")])
def test_grey_images_decode_to_the_same_bytes_as_through_rgb(mode, pre):
    """The grey fast path (resize one band, then repeat it) equals converting to RGB first."""
    from colhead.extract._images import resize_crop, to_rgb

    rng = np.random.default_rng(3)
    grey = Image.fromarray(rng.integers(0, 255, (300, 277), dtype=np.uint8), "L")
    img = (
        grey.convert(mode)
        if mode != "I;16"
        else Image.fromarray(rng.integers(0, 65535, (300, 277), dtype=np.uint16))
    )
    fmt = "TIFF" if mode in ("F", "I;16") else "PNG"
    data = enc(img, fmt)
    expected = resize_crop(to_rgb(Image.open(io.BytesIO(data))), pre)
    assert expected.shape == (pre.crop, pre.crop, 3)
    np.testing.assert_array_equal(decode(data, pre), expected)
    if mode == "L":
        arr = np.asarray(grey)
        np.testing.assert_array_equal(from_array(arr, pre), resize_crop(to_rgb(grey), pre))
