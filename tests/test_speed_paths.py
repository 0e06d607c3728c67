"""The CPU fast paths change speed, never results: micro-batches, the thread tuner, workers."""

import numpy as np
import pytest

from colhead.extract._embedder import Embedder, ThreadTuner
from colhead.extract._extractor import workers_and_threads


def test_thread_tuner_explores_then_keeps_the_faster_option_and_rechecks():
    tuner = ThreadTuner((2, 1), every=8, probes=2)
    speed = {1: 0.01, 2: 0.03}  # seconds per image: 1 thread is faster here
    picks = []
    for _ in range(40):
        with tuner.threads():
            picks.append(tuner.current)
        tuner.record(speed[tuner.current] * 8, 8)
    assert picks[:6] == [1, 1, 1, 2, 2, 2]  # warm-up + 2 measured slices each
    assert picks[6:].count(1) > picks[6:].count(2) >= 2  # mostly the faster, re-checked
    speed = {1: 0.05, 2: 0.01}  # the load changed: now 2 threads win
    for _ in range(40):
        with tuner.threads():
            picks.append(tuner.current)
        tuner.record(speed[tuner.current] * 8, 8)
    assert picks[-10:].count(2) >= 8


def test_cpu_workers_leave_the_column_the_other_cores():
    import torch

    n, threads = workers_and_threads(None, torch.device("cpu"))
    assert n >= 1 and threads >= 1
    assert workers_and_threads(0, torch.device("cpu"))[0] == 0
    assert workers_and_threads(3, torch.device("cuda"))[1] is None


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_thread_counts_and_the_tuner_give_the_same_vectors(precision):
    import torch

    from colhead._device import cpu_has_bf16

    if precision == "bf16" and not cpu_has_bf16():
        pytest.skip("no native bf16 on this CPU")
    emb = Embedder("tiny", device="cpu", precision=precision)
    x = np.random.default_rng(0).integers(0, 256, (21, 32, 32, 3), dtype=np.uint8)
    plain = emb.forward(x)
    emb.tuner = ThreadTuner((1, max(2, torch.get_num_threads())), every=2, probes=1)
    tuned = [emb.forward(x) for _ in range(3)]
    emb.tuner = None
    for t in tuned:
        np.testing.assert_array_equal(t, plain)
    assert plain.shape == (21, emb.dim)


def test_thread_tuner_rechecks_a_losing_option_ever_more_rarely():
    tuner = ThreadTuner((1, 2), every=4, probes=1, max_every=64)
    picks = []
    for _ in range(300):
        with tuner.threads():
            picks.append(tuner.current)
        tuner.record({1: 0.01, 2: 0.2}[tuner.current] * 8, 8)  # 2 threads collapsed: 20x slower
    rechecks = picks[4:].count(2)
    assert 3 <= rechecks <= 8  # after 4, 8, 16, 32, then every 64 slices


# -- the default path, end to end (issue 16) and the OpenVINO backend (issue 14) ---------------
def _photos(root, n=12):
    """n real photos (sklearn's samples, cropped and resized differently), saved as JPEG."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    root.mkdir(parents=True, exist_ok=True)
    srcs = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    for i in range(n):
        a = srcs[i % 2]
        y, x = (i * 17) % 100, (i * 29) % 160
        im = Image.fromarray(a[y : y + 320, x : x + 480]).resize((320 + 16 * i, 240 + 12 * i))
        im.save(root / f"p{i:02d}.jpg", quality=90)
    return root


def _cos(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return _photos(tmp_path_factory.mktemp("photos") / "p")


@pytest.fixture(scope="module")
def fp32_reference(photos):
    """The default column in torch fp32 on the same decoded pixels: the vectors to stay near."""
    emb = Embedder(device="cpu", precision="fp32", backend="torch")
    paths = sorted(photos.iterdir())
    feats, errors = emb.embed(paths)
    assert errors == [None] * len(paths)
    return {p.name: f for p, f in zip(paths, feats)}


@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_the_default_path_end_to_end(backend, photos, fp32_reference, tmp_path, monkeypatch):
    """Default column, auto precision, decode workers on, the tuner (torch) or OpenVINO's
    threads: vectors near fp32, a run interrupted after one batch resumes to the same vectors,
    and the column's thread count is recorded."""
    import colhead
    from colhead._device import cpu_has_bf16
    from colhead.cache import open_cache
    from colhead.extract import _extractor

    monkeypatch.setattr(_extractor, "CPU_LOAD_BATCH", 4)  # batches of 8 loaded in parts of 4
    kw = dict(data=f"folder:{photos}", batch_size=8, backend=backend, progress=False)
    whole = colhead.extract(out=tmp_path / "whole.h5", **kw)
    assert whole.precision == ("bf16" if cpu_has_bf16() else "fp32")
    assert whole.workers == 2 and whole.written == 12
    assert whole.threads is not None and whole.threads >= 1
    if backend == "torch":
        assert whole.backend == "torch"
    c = open_cache(whole.path)
    ref = np.stack([fp32_reference[i] for i in c.ids])
    cos = _cos(c.features, ref)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, cos  # bf16 vs fp32 on real photos

    real = _extractor.write_batch
    calls = []

    def interrupt_after_one(*a, **k):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(_extractor, "write_batch", interrupt_after_one)
    with pytest.raises(KeyboardInterrupt):
        colhead.extract(out=tmp_path / "resumed.h5", **kw)
    monkeypatch.setattr(_extractor, "write_batch", real)
    assert len(open_cache(tmp_path / "resumed.h5")) == 4
    again = colhead.extract(out=tmp_path / "resumed.h5", **kw)
    assert (again.reused, again.written, again.backend) == (4, 8, whole.backend)
    r = open_cache(again.path)
    order = np.argsort(r.ids)
    assert list(np.asarray(r.ids)[order]) == list(c.ids)
    np.testing.assert_array_equal(r.features[order], c.features)


def test_openvino_vectors_match_torch_fp32(photos, fp32_reference):
    pytest.importorskip("openvino")
    from colhead._device import cpu_has_bf16

    paths = sorted(photos.iterdir())[:6]
    ref = np.stack([fp32_reference[p.name] for p in paths])
    for precision, floor in (("fp32", 0.999), ("bf16", 0.99)):
        if precision == "bf16" and not cpu_has_bf16():
            continue
        emb = Embedder(device="cpu", precision=precision, backend="openvino")
        assert emb.backend == "openvino"
        assert emb.identity["precision"] == f"openvino-{precision}"
        feats, _ = emb.embed(paths)
        cos = _cos(feats, ref)
        assert cos.min() >= floor, (precision, cos)


def test_openvino_conversion_is_cached_and_reused(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from colhead.extract import _openvino

    x = np.random.default_rng(1).integers(0, 256, (11, 32, 32, 3), dtype=np.uint8)
    first = Embedder("tiny", device="cpu", precision="fp32", backend="openvino", cache_dir=tmp_path)
    assert len(list((tmp_path / "openvino").glob("tiny.*/model.xml"))) == 1

    def no_conversion(*a, **k):
        raise AssertionError("converted again")

    monkeypatch.setattr(_openvino, "convert", no_conversion)
    second = Embedder(
        "tiny", device="cpu", precision="fp32", backend="openvino", cache_dir=tmp_path
    )
    np.testing.assert_array_equal(first.forward(x), second.forward(x))
    torch_ = Embedder("tiny", device="cpu", precision="fp32", backend="torch")
    np.testing.assert_allclose(second.forward(x), torch_.forward(x), rtol=1e-4, atol=1e-5)
    assert second.identity != torch_.identity
    assert second.column_key == torch_.column_key  # same meaning: a head fits both


def test_openvino_and_torch_caches_never_mix(image_folder, tmp_path):
    pytest.importorskip("openvino")
    import colhead
    from colhead.cache import CacheMismatchError

    kw = dict(column="tiny", precision="fp32", workers=0, progress=False)
    out = tmp_path / "c.h5"
    a = colhead.extract(data=f"folder:{image_folder}", out=out, backend="torch", **kw)
    with pytest.raises(CacheMismatchError, match="precision: cache has fp32, asked for openvino"):
        colhead.extract(data=f"folder:{image_folder}", out=out, backend="openvino", **kw)
    b = colhead.extract(data=f"folder:{image_folder}", out=out, backend="auto", **kw)
    assert (a.backend, b.backend, b.reused) == ("torch", "torch", 12)  # auto keeps to the cache
    d = tmp_path / "caches"
    t = colhead.extract(data=f"folder:{image_folder}", cache_dir=d, backend="torch", **kw)
    o = colhead.extract(data=f"folder:{image_folder}", cache_dir=d, backend="openvino", **kw)
    assert t.path != o.path and "openvino-fp32" in o.path


def test_cpu_batches_load_in_parts_grouped_by_position():
    import torch

    from colhead.extract._extractor import load_batches

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plan = [[0, 1, 2, 17, 18, 40], [64, 65]]  # pending positions; 3..16 etc. were reused
    assert load_batches(plan, 64, cpu) == [[0, 1, 2], [17, 18], [40], [64, 65]]
    assert load_batches(plan, 64, cuda) == plan
    assert load_batches([[0, 1, 2, 3]], 20, cpu) == [[0, 1, 2, 3]]  # not a multiple of 16


def test_auto_falls_back_to_torch_only_when_openvino_fails(tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from colhead.extract import _openvino

    def unsupported(*a, **k):
        raise RuntimeError("unsupported op")

    monkeypatch.setattr(_openvino, "convert", unsupported)
    kw = dict(device="cpu", precision="fp32", cache_dir=tmp_path)
    with pytest.warns(UserWarning, match="OpenVINO could not run column tiny.*unsupported op"):
        assert Embedder("tiny", backend="auto", **kw).backend == "torch"
    with pytest.raises(RuntimeError, match="OpenVINO could not run column tiny"):
        Embedder("tiny", backend="openvino", **kw)
    import warnings

    with warnings.catch_warnings():  # the column's own error: raised as is, no fallback attempt
        warnings.simplefilter("error")
        with pytest.raises(FileNotFoundError, match="No weights file"):
            Embedder("tiny", backend="auto", weights=tmp_path / "missing.pt", **kw)


def test_openvino_conversion_is_redone_when_the_builder_code_changes(tmp_path, monkeypatch):
    # A converted model is keyed by the code that builds the network too: a changed builder
    # (e.g. which stages `:stages` pools) once kept serving an IR of the old network.
    pytest.importorskip("openvino")
    from colhead.extract import _openvino

    ident = {"column": "tiny:stages", "weights_sha256": "0" * 64, "preprocess": {}}
    code = tmp_path / "code"
    code.mkdir()
    (code / "_stages.py").write_text("POOL = 'every block'\n")
    monkeypatch.setattr(_openvino, "__file__", str(code / "_openvino.py"))
    _openvino._code_digest.cache_clear()
    before = _openvino.ir_dir(tmp_path, ident)
    assert _openvino.ir_dir(tmp_path, ident) == before
    (code / "_stages.py").write_text("POOL = 'every stage'\n")
    _openvino._code_digest.cache_clear()
    assert _openvino.ir_dir(tmp_path, ident) != before
    _openvino._code_digest.cache_clear()


def test_openvino_gets_every_core_unless_the_caller_fixes_its_threads(
    image_folder, tmp_path, monkeypatch
):
    import os

    import colhead

    pytest.importorskip("openvino")
    cores = len(os.sched_getaffinity(0))
    if cores < 2:
        pytest.skip("one core: every choice is 1 thread")
    monkeypatch.setenv("COLHEAD_CACHE", str(tmp_path / "cache"))
    data = f"folder:{image_folder}"
    # as many decode workers as cores: torch's column would get the 1 core they "leave"
    kw = dict(backend="openvino", workers=cores, progress=False)
    auto = colhead.extract("tiny", data, out=tmp_path / "a.h5", **kw)
    fixed = colhead.extract("tiny", data, out=tmp_path / "b.h5", threads=1, **kw)
    assert auto.threads == cores and fixed.threads == 1
