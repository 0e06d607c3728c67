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


def solid(color, mode="RGB", size=(40, 30)):
    return Image.new(mode, size, color)


def palette_half_transparent():
    """Left half palette index 0 (transparent), right half index 1 (blue)."""
    img = Image.new("P", (40, 30), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (20, 0, 40, 30))
    return img


# kind -> (encoded bytes, {(row, col) or None for every pixel: expected RGB}, tolerance).
# Solid colours make the expected output exact (up to the codec's loss): a conversion that
# swaps channels, drops alpha on black or saturates 16-bit data fails here (issue 16).
CONVERTED = {
    "rgb_jpeg": (lambda: enc(solid((200, 100, 50)), "JPEG", quality=95), {None: (200, 100, 50)}, 3),
    "grey_png": (lambda: enc(solid(120, "L"), "PNG"), {None: (120, 120, 120)}, 0),
    "cmyk_jpeg": (
        lambda: enc(solid((200, 100, 50)).convert("CMYK"), "JPEG", quality=95),
        {None: (200, 100, 50)},
        4,
    ),
    "one_bit_png": (lambda: enc(solid(1, "1"), "PNG"), {None: (255, 255, 255)}, 0),
    "palette_transparent_png": (
        lambda: enc(palette_half_transparent(), "PNG", transparency=0),
        {(16, 2): (255, 255, 255), (16, 29): (0, 0, 255)},  # transparent -> white | blue
        0,
    ),
    # half-transparent colours composited on white: 255 - (255 - c) * 128 / 255
    "rgba_png": (
        lambda: enc(solid((200, 100, 50, 128), "RGBA"), "PNG"),
        {None: (227, 177, 152)},
        1,
    ),
    "grey_alpha_png": (lambda: enc(solid((100, 128), "LA"), "PNG"), {None: (177, 177, 177)}, 1),
    "sixteen_bit_png": (  # 51400 / 257 = 200: 16-bit scaled to 8, not clipped or truncated
        lambda: enc(Image.fromarray(np.full((30, 40), 51400, np.uint16)), "PNG"),
        {None: (200, 200, 200)},
        0,
    ),
    "one_by_one_png": (
        lambda: enc(solid((10, 20, 30), size=(1, 1)), "PNG"),
        {None: (10, 20, 30)},
        0,
    ),
    "animated_gif": (  # the first frame (red), not the second (blue)
        lambda: enc(
            solid((255, 0, 0)).convert("P"),
            "GIF",
            save_all=True,
            append_images=[solid((0, 0, 255)).convert("P")],
        ),
        {None: (255, 0, 0)},
        0,
    ),
    "webp": (lambda: enc(solid((200, 100, 50)), "WEBP", lossless=True), {None: (200, 100, 50)}, 0),
    "bmp": (lambda: enc(solid((200, 100, 50)), "BMP"), {None: (200, 100, 50)}, 0),
    "tiff": (lambda: enc(solid((200, 100, 50)), "TIFF"), {None: (200, 100, 50)}, 0),
}


@pytest.mark.parametrize("kind", sorted(CONVERTED))
def test_odd_but_valid_images_are_converted_to_the_right_colours(kind):
    make, expected, tol = CONVERTED[kind]
    out = decode(make(), PRE)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    mean, std = np.array(PRE.mean) * 255.0, np.array(PRE.std) * 255.0
    for where, rgb_ in expected.items():
        got = out.reshape(-1, 3) if where is None else out[where][None]
        assert np.abs(got.astype(int) - rgb_).max() <= tol, (kind, where, got[0], rgb_)
        # and the values the column sees, normalised as the embedder does
        np.testing.assert_allclose(
            (got - mean) / std,
            ((np.array(rgb_) - mean) / std)[None].repeat(len(got), 0),
            atol=(tol + 1e-6) / std.min(),
        )


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
    if mode in ("I;16", "F"):
        # high-depth images are resized in their own depth, then scaled to 8 bits (issue 13):
        # no 8-bit rounding and clipping between PIL's two resampling passes (and no reduce()
        # step for 16-bit), so pure noise differs by a few levels where the filter overshoots,
        # and on average by about one.
        diff = np.abs(decode(data, pre).astype(int) - expected.astype(int))
        assert diff.mean() < 1.0 and np.percentile(diff, 99) <= 3
    else:
        np.testing.assert_array_equal(decode(data, pre), expected)
    if mode == "L":
        arr = np.asarray(grey)
        np.testing.assert_array_equal(from_array(arr, pre), resize_crop(to_rgb(grey), pre))


# -- issue 13: memory and decoding -------------------------------------------------------------
MEASURE = """
import resource, sys
from colhead.extract import Preprocess, decode
data = open(sys.argv[1], "rb").read()
pre = Preprocess(256, 224, (0.5,) * 3, (0.5,) * 3, "bicubic")
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = decode(data, pre)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024, int(out.mean()))
"""


def peak_mib(tmp_path, data: bytes) -> tuple[float, int]:
    """Peak memory (MiB above the imports) of decoding ``data``, in a fresh process."""
    import subprocess
    import sys

    f = tmp_path / "img.bin"
    f.write_bytes(data)
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(f)], capture_output=True, text=True, check=True
    )
    mib, mean = out.stdout.split()
    return float(mib), int(mean)


@pytest.mark.parametrize(
    "make,mean,limit",
    [
        # an 87-byte 1x2000 PNG cost ~154 MiB, a 121-byte 1x10000 RGB one ~2.6 GiB (upscaled
        # whole to 256 x 2.56M before the crop)
        (lambda: enc(Image.new("L", (1, 2000), 128), "PNG", optimize=True), 128, 20),
        (lambda: enc(Image.new("RGB", (1, 10000), (9, 9, 9)), "PNG", optimize=True), 9, 20),
        # a 4000x4000 16-bit PNG (~40 KB) cost ~30 bytes/pixel in float64 copies (~460 MiB);
        # now the 16-bit image itself (32 MB) and a crop
        (lambda: enc(Image.fromarray(np.full((4000, 4000), 40000, np.uint16)), "PNG"), 156, 80),
    ],
    ids=["thin_grey_1x2000", "thin_rgb_1x10000", "sixteen_bit_4000x4000"],
)
def test_small_files_do_not_decode_huge(tmp_path, make, mean, limit):
    mib, got = peak_mib(tmp_path, make())
    assert got == mean
    assert mib < limit, f"decoding took {mib:.0f} MiB (limit {limit})"


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "ICO", "SGI", "QOI"])
def test_formats_outside_the_list_are_refused(fmt):
    """PIL opens ~40 formats (EPS runs Ghostscript); colhead reads the ones it lists."""
    data = enc(Image.new("RGB", (40, 30), (200, 100, 50)), fmt)
    assert Image.open(io.BytesIO(data)).format == fmt  # PIL alone would read it
    with pytest.raises(BadImage, match="not an image in a format colhead reads"):
        decode(data, PRE)


def test_multi_picture_jpeg_still_decodes():
    img = Image.new("RGB", (40, 30), (200, 100, 50))
    data = enc(img, "MPO", save_all=True, append_images=[img])
    assert tuple(decode(data, PRE)[0, 0]) == (200, 100, 50)


@pytest.mark.parametrize("exc", [IndexError("list index"), MemoryError(), KeyError("x")])
def test_any_exception_while_decoding_is_a_bad_image(monkeypatch, exc):
    """A plugin's bug (or memory running out) fails this one image, never the batch."""

    def boom(self, *a, **k):
        raise exc

    from PIL import ImageFile

    monkeypatch.setattr(ImageFile.ImageFile, "load", boom)
    with pytest.raises(BadImage, match=f"cannot decode: {type(exc).__name__}"):
        decode(enc(rgb(), "PNG"), PRE)


def test_an_array_that_cannot_be_converted_is_a_bad_image():
    with pytest.raises(BadImage, match="cannot convert the array: ValueError"):
        from_array(np.array([["a", "b"], ["c", "d"]], dtype=object), PRE)
