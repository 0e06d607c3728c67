"""The device-side JPEG path (extract/_gpu_decode.py), run on the CPU: no test needs a GPU.

torchvision's decode_jpeg takes a list on the CPU too, so the code that runs on CUDA is the code
tested here, with device="cpu". Tolerances, stated honestly: against the CPU path without draft
decoding, pixels differ by <= 0.5 grey levels on average (<= 0.004 in the tiny column's
normalised units, std 0.5), at most 8 levels anywhere (different antialiased filters and IDCTs);
against the default CPU path (draft decoding of large JPEGs) the tiny column's vectors keep a
cosine >= 0.99.
"""

import io

import numpy as np
import pytest
from PIL import Image

import colhead
from colhead.cache import open_cache
from colhead.cli import main
from colhead.extract import get_column
from colhead.extract._embedder import Embedder
from colhead.extract._gpu_decode import decode_batch, device_friendly, resolve_decode
from colhead.extract._images import BadImage, decode

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")

FAST = dict(column="tiny", precision="fp32", workers=0, progress=False)


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def items() -> dict[str, bytes]:
    """Real photos (scikit-learn's samples) as JPEG at a few sizes, and the odd ones."""
    from sklearn.datasets import load_sample_images

    china, flower = (Image.fromarray(a) for a in load_sample_images().images)
    out = {}
    for name, im in (("china", china), ("flower", flower)):
        for w in (120, 330, 640):
            out[f"{name}{w}.jpg"] = _jpeg(im.resize((w, round(w * im.height / im.width))))
    small = china.resize((200, 134))
    out["grey.jpg"] = _jpeg(small.convert("L"))
    buf = io.BytesIO()
    small.save(buf, format="PNG")
    out["photo.png"] = buf.getvalue()
    out["cmyk.jpg"] = _jpeg(small.convert("CMYK"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: the CPU decoder turns it upright
    out["rotated.jpg"] = _jpeg(small, exif=exif.tobytes())
    out["corrupt.jpg"] = out["china330.jpg"][:700]
    out["empty.jpg"] = b""
    out["text.jpg"] = b"this is not an image\n"
    return out


BAD = ("corrupt.jpg", "empty.jpg", "text.jpg")
ROUTED = ("photo.png", "cmyk.jpg", "rotated.jpg")  # not for the device path: the CPU decodes


def _cpu(data: bytes, pre, draft: bool):
    try:
        return decode(data, pre, draft=draft), None
    except BadImage as e:
        return None, str(e)


@pytest.mark.parametrize("column", ["tiny", "efficientnet_lite0"])  # 36/32 px and 256/224 px
def test_device_path_matches_the_cpu_decoder(items, column):
    pre = get_column(column).preprocess
    names = list(items)
    x, reasons = decode_batch([items[n] for n in names], pre, device="cpu", draft=False)
    assert x.dtype == torch.uint8 and x.shape[1:] == (pre.crop, pre.crop, 3)
    rows = iter(x.numpy())
    for name, reason in zip(names, reasons):
        ref, why = _cpu(items[name], pre, draft=False)
        assert reason == why, name  # the same skip reason, word for word
        if ref is None:
            continue
        got = next(rows).astype(np.float32)
        diff = np.abs(got - ref)
        if name in ROUTED:
            assert diff.max() == 0, name  # decoded by the CPU decoder itself
        else:
            assert diff.mean() <= 0.5 and diff.max() <= 8, (name, diff.mean(), diff.max())
    assert next(rows, None) is None
    assert [n for n, r in zip(names, reasons) if r] == list(BAD)


def test_routing_reads_the_header_only(items):
    pre = get_column("tiny").preprocess
    assert device_friendly(items["china640.jpg"], pre) and device_friendly(items["grey.jpg"], pre)
    for name in ROUTED + BAD:
        assert not device_friendly(items[name], pre), name
    long = _jpeg(Image.new("RGB", (2000, 20)))  # the CPU resizes only its crop region
    assert not device_friendly(long, pre)


def test_a_failing_batch_decode_falls_back_image_by_image(items, monkeypatch):
    """One image nvJPEG refuses fails the batched call; every other image still decodes."""
    import torchvision.io

    pre = get_column("tiny").preprocess
    real = torchvision.io.decode_jpeg
    refused = items["china120.jpg"]

    def picky(data, **kw):
        if isinstance(data, list):
            raise RuntimeError("nvjpeg: batch failed")
        if bytes(data.numpy()) == refused:
            raise RuntimeError("nvjpeg: unsupported")
        return real(data, **kw)

    monkeypatch.setattr(torchvision.io, "decode_jpeg", picky)
    names = ["china120.jpg", "flower330.jpg", "corrupt.jpg"]
    x, reasons = decode_batch([items[n] for n in names], pre, device="cpu", draft=False)
    assert len(x) == 2 and reasons[:2] == [None, None] and "truncated" in reasons[2]
    assert np.array_equal(x[0].numpy(), decode(refused, pre, draft=False))  # the CPU's


def test_vectors_of_the_tiny_column_agree_with_the_default_cpu_path(items):
    emb = Embedder("tiny", device="cpu", precision="fp32", backend="torch", decode="gpu")
    names = [n for n in items if n not in BAD]
    x, reasons = emb.decode_batch([items[n] for n in names])
    assert reasons == [None] * len(names)
    ref = np.stack([emb.preprocess(items[n]) for n in names])  # draft on: the default path
    a, b = emb.forward(x), emb.forward(ref)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cos.min() >= 0.99, dict(zip(names, cos.round(4)))


def test_decode_choice_auto_is_the_device_on_cuda_only():
    assert resolve_decode("auto", torch.device("cuda")) is True
    assert resolve_decode("auto", torch.device("cpu")) is False
    assert resolve_decode("gpu", torch.device("cpu")) is True
    assert resolve_decode("cpu", torch.device("cuda")) is False
    with pytest.raises(ValueError, match="decode must be one of auto, cpu, gpu, got 'nvjpeg'"):
        resolve_decode("nvjpeg", torch.device("cpu"))


def test_extract_with_device_decoding_skips_as_the_cpu_path(items, tmp_path):
    root = tmp_path / "imgs"
    for i, (name, data) in enumerate(items.items()):
        (root / ("a" if i % 2 else "b")).mkdir(parents=True, exist_ok=True)
        (root / ("a" if i % 2 else "b") / name).write_bytes(data)
    ref = colhead.extract(data=f"folder:{root}", out=tmp_path / "cpu.h5", batch_size=4, **FAST)
    dev = colhead.extract(
        data=f"folder:{root}", out=tmp_path / "dev.h5", batch_size=4, decode="gpu", **FAST
    )
    assert (dev.written, dev.skipped_now) == (ref.written, ref.skipped_now) == (10, 3)
    c, d = open_cache(tmp_path / "cpu.h5"), open_cache(tmp_path / "dev.h5")
    assert list(c.ids) == list(d.ids) and list(c.labels) == list(d.labels)
    assert sorted(c.skipped) == sorted(d.skipped)  # same items, same reasons
    assert d.identity == c.identity  # decoding is provenance, as draft decoding is
    assert (d.metadata["runs"][-1]["decode"], c.metadata["runs"][-1]["decode"]) == ("device", "cpu")
    cos = (c.features * d.features).sum(1)
    cos /= np.linalg.norm(c.features, axis=1) * np.linalg.norm(d.features, axis=1)
    assert cos.min() >= 0.99


def test_compile_is_provenance_not_identity(image_folder, tmp_path, monkeypatch):
    """torch.compile on the CPU takes minutes to build: the option's plumbing is tested with a
    stand-in that records what it compiled."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: compiled.append(m) or m)
    out = tmp_path / "c.h5"
    argv = "extract --column tiny --device cpu --precision fp32 --workers 0 --no-progress"
    code = main(
        argv.split()
        + ["--data", f"folder:{image_folder}", "--out", str(out), "--compile", "--decode", "gpu"]
    )
    assert code == 0 and len(compiled) == 1
    c = open_cache(out)
    run = c.metadata["runs"][-1]
    assert (run["compile"], run["backend"], run["decode"]) == (True, "torch", "device")
    # --backend auto with --compile is torch (OpenVINO has nothing to compile)
    plain = colhead.extract(
        data=f"folder:{image_folder}", out=tmp_path / "p.h5", backend="torch", **FAST
    )
    assert open_cache(plain.path).identity == c.identity


def test_compile_refuses_openvino():
    with pytest.raises(ValueError, match="--compile compiles the torch column"):
        Embedder("tiny", device="cpu", backend="openvino", compile=True)


def test_preprocessed_arrays_pass_through(items):
    pre = get_column("tiny").preprocess
    arr = decode(items["photo.png"], pre)
    x, reasons = decode_batch([arr, items["grey.jpg"]], pre, device="cpu")
    assert reasons == [None, None] and np.array_equal(x[0].numpy(), arr)
