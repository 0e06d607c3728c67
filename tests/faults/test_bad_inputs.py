"""A bad-input corpus, made here, extracted end to end with ``colhead extract``.

``tests/test_images.py`` pins the decoder on each odd image in isolation; here the whole job
meets them together, with the file-system oddities a real folder has: every item becomes a
row or is skipped with its reason recorded, the job finishes and says how many it skipped.
CSV lists with missing columns, missing or new labels and paths leaving their folder get a
clear error (or, for new labels, new classes) before anything is written.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from colhead.cache import open_cache

from ._procs import FIGURES, extract_argv


def _enc(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _rgb(w=40, h=30, seed=0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), "RGB")


def _png_bomb(w: int, h: int) -> bytes:
    def chunk(kind, data):
        crc = struct.pack(">I", zlib.crc32(kind + data))
        return struct.pack(">I", len(data)) + kind + data + crc

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b""))


def _jpeg_bomb(w: int, h: int) -> bytes:
    """A real small JPEG whose frame header claims w x h."""
    data = bytearray(_enc(_rgb(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", h, w)
    return bytes(data)


def _exif_rotated() -> tuple[bytes, bytes]:
    """(stored sideways with EXIF orientation 6, the same image stored upright)."""
    upright = _rgb(40, 30, seed=3)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    sideways = upright.transpose(Image.Transpose.ROTATE_90)
    return _enc(sideways, "PNG", exif=exif), _enc(upright, "PNG")


ROOT_IS_GOD = os.geteuid() == 0  # root reads a chmod 000 file anyway


def make_corpus(root: Path) -> dict[str, str | None]:
    """Write the corpus; return {item id: None (becomes a row) or words of its skip reason}."""
    d = root / "odd"
    d.mkdir(parents=True)
    expect: dict[str, str | None] = {}

    def put(name: str, data: bytes, reason: str | None = None) -> Path:
        (d / name).write_bytes(data)
        expect[f"odd/{name}"] = reason
        return d / name

    good_jpeg = _enc(_rgb(64, 48), "JPEG")
    good_png = _enc(_rgb(64, 48, seed=1), "PNG")
    # converted
    put("cmyk.jpg", _enc(_rgb().convert("CMYK"), "JPEG"))
    ramp = (np.arange(1200, dtype=np.uint16) * 50).reshape(30, 40)
    put("sixteen_bit.png", _enc(Image.fromarray(ramp), "PNG"))
    put("one_bit.png", _enc(_rgb().convert("1"), "PNG"))
    put("palette_transparent.png", _enc(_rgb().convert("P"), "PNG", transparency=0))
    put("one_by_one.png", _enc(_rgb(1, 1), "PNG"))
    sideways, upright = _exif_rotated()
    put("exif_rotated.png", sideways)
    put("upright.png", upright)
    frames = [_rgb(seed=5).convert("P"), _rgb(seed=6).convert("P")]
    put("animated.gif", _enc(frames[0], "GIF", save_all=True, append_images=frames[1:]))
    put("UPPER.JPG", good_jpeg)
    put("grey_alpha.png", _enc(_rgb().convert("LA"), "PNG"))
    put("tiny.webp", _enc(_rgb(), "WEBP"))
    put("scan.tiff", _enc(_rgb(), "TIFF"))
    put("spaces and ünïcode.png", good_png)
    # 87 bytes that resized whole took ~154 MiB (issue 13): now only the crop is resized
    put("thin_1x2000.png", _enc(Image.new("L", (1, 2000), 128), "PNG", optimize=True))
    # a file name that is not UTF-8: the id spells the byte as \xe9
    (d / os.fsdecode(b"caf\xe9.png")).write_bytes(good_png)
    expect["odd/caf\\xe9.png"] = None
    locked = put("locked.png", good_png, None if ROOT_IS_GOD else "Permission denied")
    locked.chmod(0)
    # skipped, with the reason recorded
    put("truncated.jpg", good_jpeg[: len(good_jpeg) // 2], "truncated")
    put("truncated.png", good_png[: len(good_png) // 2], "cannot decode")
    put("zero_bytes.jpg", b"", "empty file")
    put("text.jpg", b"this is a shopping list, not a photo\n", "not an image")
    put("bomb.png", _png_bomb(20000, 20000), "decompression bomb")
    # a format PIL reads but colhead does not list (PIL would try ~40; issue 13)
    put("targa.jpg", _enc(_rgb(), "TGA"), "not an image in a format colhead reads")
    put("bomb.jpg", _jpeg_bomb(20000, 20000), "decompression bomb")
    os.symlink("loop.jpg", d / "loop.jpg")  # a link to itself
    expect["odd/loop.jpg"] = "symbolic links"
    os.symlink(d / "nowhere.png", d / "dangling.png")
    expect["odd/dangling.png"] = "No such file"
    os.mkfifo(d / "pipe.png")  # open() alone would wait for a writer forever
    expect["odd/pipe.png"] = "not a regular file"
    os.symlink("/dev/zero", d / "endless.jpg")  # read() would never end
    expect["odd/endless.jpg"] = "not a regular file"
    with open(d / "huge.jpg", "wb") as f:  # sparse: 2 GiB on paper, nothing on disk
        f.truncate(2 << 30)
    expect["odd/huge.jpg"] = "more than any decodable image"
    # a folder symlink loop: walked without following it, so not an item at all
    os.symlink(root, d / "back_to_root")
    (d / "notes.txt").write_text("not an image extension: not an item\n")
    return expect


@pytest.fixture(scope="module")
def corpus(zygote, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    expect = make_corpus(root / "data")
    out = root / "c.h5"
    r = zygote.run(extract_argv(out, f"folder:{root / 'data'}", batch_size=4), timeout=120)
    (root / "data" / "odd" / "locked.png").chmod(0o644)
    return expect, out, r


def test_every_bad_input_is_a_row_or_a_recorded_skip(corpus):
    expect, out, r = corpus
    r.assert_no_crash()
    assert r.rc == 0, r.describe()
    skipped = sum(1 for v in expect.values() if v)
    assert f"{skipped} items skipped" in r.out, r.describe()
    c = open_cache(out, require_complete=True)
    reasons = dict(c.skipped)
    assert sorted(c.ids) == sorted(k for k, v in expect.items() if v is None)
    assert sorted(reasons) == sorted(k for k, v in expect.items() if v)
    for item, words in expect.items():
        if words:
            assert words in reasons[item], f"{item}: {reasons[item]!r}"
    FIGURES["bad inputs tried (images and files)"] += len(expect)
    FIGURES["  converted to a row"] += len(c)
    FIGURES["  skipped with the reason recorded"] += len(reasons)
    print(f"{len(expect)} inputs: {len(c)} rows, {len(reasons)} skipped")
    for item, reason in sorted(reasons.items()):
        print(f"  skipped {item}: {reason}")


def test_exif_rotation_reaches_the_vectors(corpus):
    _, out, _ = corpus
    c = open_cache(out)
    row = {i: k for k, i in enumerate(c.ids)}
    np.testing.assert_array_equal(
        c.features[row["odd/exif_rotated.png"]], c.features[row["odd/upright.png"]]
    )


def test_the_report_lists_the_skipped_items(zygote, corpus):
    expect, out, _ = corpus
    info = zygote.run(["cache", "info", "--json", str(out)])
    assert info.rc == 0, info.describe()
    got = dict(json.loads(info.out)["skipped"])
    assert sorted(got) == sorted(k for k, v in expect.items() if v)
    assert zygote.run(["cache", "verify", str(out)]).rc == 0


def test_a_rerun_retries_nothing_unchanged_and_fixed_files_become_rows(zygote, corpus, tmp_path):
    expect, out, _ = corpus
    data = Path(open_cache(out).identity["dataset"].split(":", 1)[1])
    r = zygote.run(extract_argv(out, f"folder:{data}", batch_size=4))
    assert r.rc == 0 and " 0 rows written" in r.out and "0 skipped now" in r.out, r.describe()
    # The user repairs one file: the next run turns it into a row.
    fixed = data / "odd" / "zero_bytes.jpg"
    fixed.write_bytes(_enc(_rgb(seed=9), "JPEG"))
    r = zygote.run(extract_argv(out, f"folder:{data}", batch_size=4))
    assert r.rc == 0 and " 1 rows written" in r.out, r.describe()
    c = open_cache(out)
    assert "odd/zero_bytes.jpg" in c.ids and "odd/zero_bytes.jpg" not in dict(c.skipped)
    fixed.write_bytes(b"")  # back as it was, for the other tests of the module


# --- CSV lists -----------------------------------------------------------------------------


def _images(folder: Path, n: int = 3) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        (folder / f"im{i}.png").write_bytes(_enc(_rgb(seed=20 + i), "PNG"))
        names.append(f"im{i}.png")
    return names


CSV_ERRORS = {
    "no path column": ("file,label\nim0.png,a\n", "'path' column"),
    "empty file": ("", "found columns: none"),
    "missing label": ("path,label\nim0.png,a\nim1.png,\n", "line 3: missing label"),
    "blank label": ("path,label\nim0.png,   \n", "missing label"),
    "escapes its folder": ("path,label\n../outside.png,a\n", "outside the CSV's folder"),
    "absolute path": ("path,label\n/etc/passwd,a\n", "outside the CSV's folder"),
    "same path twice": ("path,label\nim0.png,a\n./im0.png,a\n", "more than once"),
    "NUL byte": ("path,label\nim0.png,a\x00b\n", "NUL byte"),
    "no rows": ("path,label\n", "lists no images"),
    # an AttributeError traceback before issue 13
    "unquoted comma": ("path,label\nim0.png,a\nim1.png,big, wet\n", "line 3: 3 fields"),
}


@pytest.mark.parametrize("case", sorted(CSV_ERRORS))
def test_a_bad_csv_is_a_clear_error_before_anything_is_written(zygote, tmp_path, case):
    text, words = CSV_ERRORS[case]
    _images(tmp_path / "imgs")
    f = tmp_path / "imgs" / "list.csv"
    f.write_text(text)
    out = tmp_path / "c.h5"
    r = zygote.run(extract_argv(out, f"csv:{f}"))
    r.assert_no_crash()
    assert r.rc == 1 and words in r.err, r.describe()
    assert not out.exists(), "a cache was created for a list that was refused"
    FIGURES["bad CSV lists tried (clear error, nothing written)"] += 1


def test_a_latin1_csv_is_named_as_such(zygote, tmp_path):
    _images(tmp_path / "imgs")
    f = tmp_path / "imgs" / "list.csv"
    f.write_bytes("path,label\nim0.png,caf\xe9\n".encode("latin-1"))
    r = zygote.run(extract_argv(tmp_path / "c.h5", f"csv:{f}"))
    r.assert_no_crash()
    assert r.rc == 1 and "is not UTF-8 text" in r.err, r.describe()
    FIGURES["bad CSV lists tried (clear error, nothing written)"] += 1


def test_a_spreadsheet_csv_with_a_byte_order_mark_works(zygote, tmp_path):
    names = _images(tmp_path / "imgs")
    f = tmp_path / "imgs" / "list.csv"
    f.write_bytes("\ufeffpath,label\r\n".encode() + f"{names[0]},a\r\n{names[1]},b\r\n".encode())
    out = tmp_path / "c.h5"
    r = zygote.run(extract_argv(out, f"csv:{f}"))
    assert r.rc == 0, r.describe()
    assert open_cache(out).classes == ["a", "b"]


def test_a_csv_with_missing_files_and_new_labels(zygote, tmp_path):
    """Listed files that are gone are skipped; labels added later become new classes."""
    names = _images(tmp_path / "imgs")
    f = tmp_path / "imgs" / "list.csv"
    f.write_text(f"path,label\n{names[0]},cat\nmissing.png,cat\n{names[1]},dog\nsub,dog\n")
    (tmp_path / "imgs" / "sub").mkdir()
    out = tmp_path / "c.h5"
    r = zygote.run(extract_argv(out, f"csv:{f}"))
    assert r.rc == 0 and "2 items skipped" in r.out, r.describe()
    c = open_cache(out)
    assert list(c.ids) == [names[0], names[1]]
    assert "No such file" in dict(c.skipped)["missing.png"]
    assert "Is a directory" in dict(c.skipped)["sub"]
    f.write_text(f.read_text() + f"{names[2]},zebra\n")  # a label the cache has never seen
    r = zygote.run(extract_argv(out, f"csv:{f}"))
    assert r.rc == 0 and " 1 rows written" in r.out, r.describe()
    c = open_cache(out)
    assert c.classes == ["cat", "dog", "zebra"]
    assert [c.classes[i] for i in c.labels] == ["cat", "dog", "zebra"]
    FIGURES["CSV lists with missing files and new labels (converted)"] += 1


# --- split folders (issue 11) ----------------------------------------------------------------


def test_a_split_folder_needs_split_and_extracts_only_that_split(zygote, tmp_path):
    for split in ("train", "test"):
        for cls in ("a", "b"):
            _images(tmp_path / "data" / split / cls, n=2)
    out = tmp_path / "c.h5"
    r = zygote.run(extract_argv(out, f"folder:{tmp_path / 'data'}"))
    r.assert_no_crash()
    assert r.rc == 1 and "has splits test, train; choose one with --split" in r.err, r.describe()
    r = zygote.run(extract_argv(out, f"folder:{tmp_path / 'data'}") + ["--split", "val"])
    assert r.rc == 1 and "no split 'val'; its splits are test, train" in r.err, r.describe()
    assert not out.exists()
    r = zygote.run(extract_argv(out, f"folder:{tmp_path / 'data'}") + ["--split", "train"])
    assert r.rc == 0, r.describe()
    c = open_cache(out)
    assert len(c) == 4 and all(i.startswith("train/") for i in c.ids)
    assert sorted(c.classes) == ["a", "b"]
