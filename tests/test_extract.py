"""End to end: the extractor and the cache, with real files and real processes."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import colhead
import colhead.cache
from colhead.cache import CacheLockedError, CacheMismatchError, open_cache, verify_cache
from colhead.cli import main
from conftest import broken_files, photo, write_image

FAST = dict(column="tiny", precision="fp32", workers=0, progress=False)


def test_good_and_broken_images_give_rows_and_skipped_with_reasons(image_folder, tmp_path):
    expected = broken_files(image_folder / "cat")
    out = tmp_path / "c.h5"
    r = colhead.extract(data=f"folder:{image_folder}", out=out, batch_size=5, **FAST)
    assert (r.written, r.skipped_now) == (12, 3)
    c = open_cache(out)
    assert len(c) == 12 and c.complete and c.features.shape == (12, 32)
    assert sorted(c.ids) == list(c.ids)  # fixed order
    assert [c.classes[i] for i in c.labels[:4]] == ["cat"] * 4
    reasons = dict(c.skipped)
    for name, words in expected.items():
        assert words in reasons[f"cat/{name}"], reasons
    assert verify_cache(out) == []


def test_resume_after_kill_9_equals_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref.h5"
    colhead.extract(data="digits", out=ref, batch_size=16, **FAST)
    out = tmp_path / "killed.h5"
    cmd = [
        sys.executable,
        "-m",
        "colhead",
        "extract",
        "--column",
        "tiny",
        "--data",
        "digits",
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--precision",
        "fp32",
        "--workers",
        "0",
        "--no-progress",
    ]
    kills = 0
    for attempt in range(2):  # kill it mid-way, twice, at different row counts
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        target = 300 * (attempt + 1)
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None:
            try:
                if len(open_cache(out)) >= target:  # a reader, safe while the writer appends
                    break
            except Exception:
                pass
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 1, "the extraction finished before it could be killed"
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    a, b = open_cache(ref), open_cache(out)
    assert list(a.ids) == list(b.ids) and len(set(b.ids)) == len(b.ids) == 1797
    np.testing.assert_array_equal(a.features, b.features)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert verify_cache(out) == []


def test_a_second_writer_is_refused_at_once(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from colhead.cache._lock import WriterLock; "
            f"l = WriterLock({str(out)!r}).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        t = time.time()
        with pytest.raises(CacheLockedError, match=f"being written by pid {holder.pid}"):
            colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
        assert time.time() - t < 10
        assert len(open_cache(out)) == 12  # readers are fine meanwhile
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing: its lock is stale and the next writer takes over
    r = colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    assert r.reused == 12


def test_a_cache_made_with_another_column_is_refused(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    with pytest.raises(CacheMismatchError, match="column: cache has tiny, asked for efficientnet"):
        colhead.extract(
            data=f"folder:{image_folder}", out=out, **{**FAST, "column": "efficientnet_lite0"}
        )
    with pytest.raises(CacheMismatchError, match="precision"):
        colhead.extract(data=f"folder:{image_folder}", out=out, **{**FAST, "precision": "bf16"})
    assert len(open_cache(out)) == 12  # untouched


def test_cache_dir_keeps_one_file_per_configuration(image_folder, tmp_path):
    d = tmp_path / "caches"
    a = colhead.extract(data=f"folder:{image_folder}", cache_dir=d, **FAST)
    b = colhead.extract(data=f"folder:{image_folder}", cache_dir=d, **{**FAST, "precision": "bf16"})
    c = colhead.extract(data=f"folder:{image_folder}", cache_dir=d, **FAST)
    assert a.path != b.path and a.path == c.path and c.reused == 12
    assert sorted(p.name for p in d.iterdir()) == sorted(
        os.path.basename(p) for p in (a.path, b.path)
    )


def test_incremental_add_change_remove(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    before = open_cache(out)
    write_image(image_folder / "dog" / "new.png", photo(500, cls=1))  # added
    changed = image_folder / "cat" / "cat1.png"
    write_image(changed, photo(501, size=(30, 30)))  # changed content
    (image_folder / "eel" / "eel0.jpg").unlink()  # gone
    (image_folder / "cat" / "cat2.jpg").touch()  # touched, same content: kept
    r = colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    assert (r.written, r.retired, r.reused) == (2, 2, 10)
    after = open_cache(out)
    assert "eel/eel0.jpg" not in after.ids and "dog/new.png" in after.ids
    assert len(after) == 12 and len(set(after.ids)) == 12

    def row(c, i):
        return c.features[list(c.ids).index(i)]

    assert not np.allclose(row(before, "cat/cat1.png"), row(after, "cat/cat1.png"))
    np.testing.assert_array_equal(row(before, "cat/cat2.jpg"), row(after, "cat/cat2.jpg"))
    assert verify_cache(out) == []


def test_a_new_class_folder_never_renumbers_old_rows(image_folder, tmp_path):
    out = tmp_path / "c.h5"
    colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    write_image(image_folder / "ant" / "a.png", photo(7))  # sorts before every old class
    colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    c = open_cache(out)
    assert c.classes == ["cat", "dog", "eel", "ant"]
    assert c.classes[c.labels[list(c.ids).index("ant/a.png")]] == "ant"
    assert c.classes[c.labels[list(c.ids).index("cat/cat0.jpg")]] == "cat"


def test_float16_storage_halves_the_file_and_keeps_the_vectors(tmp_path):
    a = colhead.extract(data="digits", out=tmp_path / "a.h5", **FAST)
    b = colhead.extract(data="digits", out=tmp_path / "b.h5", store_dtype="float16", **FAST)
    fa, fb = open_cache(a.path).features, open_cache(b.path).features
    assert open_cache(b.path, dtype=None).features.dtype == np.float16
    np.testing.assert_allclose(fa, fb, rtol=2e-3, atol=1e-3)
    info_a, info_b = colhead.cache.cache_info(a.path), colhead.cache.cache_info(b.path)
    assert (info_a["store_dtype"], info_b["store_dtype"]) == ("float32", "float16")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(data="folder:/definitely/missing"), FileNotFoundError, "No folder"),
        (dict(data="digits", column="nope"), ValueError, "Unknown column"),
        (dict(data="nope"), ValueError, "Unknown dataset"),
        (dict(data="digits", precision="fp16"), ValueError, "fp16 needs a CUDA"),
        (dict(data="digits", out="/proc/colhead.h5"), PermissionError, "write"),
        (dict(data="digits", out="vectors.npy"), ValueError, "cache export"),
        (dict(data="digits", out="vectors.parquet"), ValueError, "--format parquet"),
        (dict(data="digits", weights="/missing/w.pt"), FileNotFoundError, "No weights file"),
    ],
)
def test_bad_arguments_fail_before_any_model_loads(kwargs, exc, match, monkeypatch):
    """Every model is built through its registry entry's ``build``: replace the entries.

    (Patching the module's ``build_tiny`` never fired: the spec keeps its own reference.)
    """
    import dataclasses

    from colhead.extract import _registry

    def boom(*a, **k):
        raise AssertionError("a model was built before validation failed")

    for name in ("tiny", "efficientnet_lite0"):
        spec = _registry._REGISTRY[name]
        monkeypatch.setitem(_registry._REGISTRY, name, dataclasses.replace(spec, build=boom))
    with pytest.raises(exc, match=match):
        colhead.extract(**{"column": "tiny", "progress": False, **kwargs})


def test_the_model_guard_fires_when_a_model_is_built(monkeypatch, tmp_path):
    """The guard above is live: with valid arguments the patched builder is reached."""
    import dataclasses

    from colhead.extract import _registry

    def boom(*a, **k):
        raise AssertionError("a model was built")

    spec = _registry._REGISTRY["tiny"]
    monkeypatch.setitem(_registry._REGISTRY, "tiny", dataclasses.replace(spec, build=boom))
    with pytest.raises(AssertionError, match="a model was built"):
        colhead.extract(data="digits", out=tmp_path / "c.h5", **FAST)


def test_cli_extract_info_verify(image_folder, tmp_path, capsys):
    broken_files(image_folder / "dog")
    out = tmp_path / "c.h5"
    assert (
        main(
            [
                "extract",
                "--column",
                "tiny",
                "--data",
                f"folder:{image_folder}",
                "--out",
                str(out),
                "--no-progress",
                "--workers",
                "0",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "12 rows written" in text and "3 items skipped" in text
    assert main(["cache", "info", str(out)]) == 0
    info = capsys.readouterr().out
    for words in (
        "complete",
        "tiny",
        "weights",
        "preprocess",
        "torch",
        "skipped    3",
        "dog/empty.jpg: empty file",
    ):
        assert words in info
    assert main(["cache", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out


def test_cli_errors_are_one_line_without_traceback(tmp_path, capsys):
    assert main(["extract", "--data", "folder:/missing/dir", "--out", str(tmp_path / "x.h5")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: No folder at") and "Traceback" not in err
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(os.urandom(4096))
    assert main(["cache", "info", str(garbage)]) == 1
    err = capsys.readouterr().err  # the cache's wording (cache/): either says it is not HDF5
    assert "cannot be read as HDF5" in err or "not an HDF5 file" in err, err
    assert main(["cache", "verify", str(garbage)]) == 1
    assert "problem" in capsys.readouterr().out


def test_python_dash_m_colhead_runs():
    out = subprocess.run(
        [sys.executable, "-m", "colhead", "columns"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "efficientnet_lite0" in out.stdout


def test_an_interrupted_cache_reads_as_incomplete_until_resumed(tmp_path):
    out = tmp_path / "c.h5"
    colhead.extract(data="digits", split="test", out=out, **FAST)
    # simulate a crash mid-run: copy the file as a writer left it, lock file included
    from colhead.cache import CacheError, CacheWriter

    w = CacheWriter(out, identity=open_cache(out).identity, metadata={}, dim=32)
    w.mark_incomplete()
    shutil.copy(out, tmp_path / "crashed.h5")
    w.close()
    crashed = tmp_path / "crashed.h5"
    assert not open_cache(crashed).complete
    with pytest.raises(CacheError, match="incomplete"):
        open_cache(crashed, require_complete=True)
    assert any("incomplete" in p for p in verify_cache(crashed))


def test_retry_skipped_tries_again_only_when_asked(image_folder, tmp_path, monkeypatch, capsys):
    from colhead.extract import _run

    real = _run.decode

    def flaky(content, pre, **k):  # the decoder fails on cat0 once (a transient fault)
        if content == (image_folder / "cat" / "cat0.jpg").read_bytes():
            raise colhead.extract.BadImage("cannot decode: transient")
        return real(content, pre, **k)

    out = tmp_path / "c.h5"
    monkeypatch.setattr(_run, "decode", flaky)
    assert colhead.extract(data=f"folder:{image_folder}", out=out, **FAST).skipped_now == 1
    monkeypatch.setattr(_run, "decode", real)
    again = colhead.extract(data=f"folder:{image_folder}", out=out, **FAST)
    assert (again.skipped_now, again.written, again.skipped) == (0, 0, 1)  # unchanged: kept
    args = ["extract", "--column", "tiny", "--data", f"folder:{image_folder}", "--out",
            str(out), "--precision", "fp32", "--workers", "0", "--no-progress",
            "--retry-skipped"]  # fmt: skip
    assert main(args) == 0
    assert "1 rows written" in capsys.readouterr().out
    c = open_cache(out)
    assert len(c) == 12 and "cat/cat0.jpg" in c.ids and dict(c.skipped) == {}


def test_no_draft_decodes_large_jpegs_in_full(tmp_path):
    from PIL import Image

    from colhead.extract import Embedder

    big = tmp_path / "big" / "a"
    big.mkdir(parents=True)
    rng = np.random.default_rng(3)
    for i in range(2):
        arr = (rng.random((1200, 1600, 3)) * 40 + np.linspace(0, 200, 1600)[None, :, None]).astype(
            np.uint8
        )
        Image.fromarray(arr).save(big / f"{i}.jpg", quality=95)
    outs = {}
    for flag in ([], ["--no-draft"]):
        out = tmp_path / f"c{len(flag)}.h5"
        args = ["extract", "--column", "tiny", "--data", f"folder:{tmp_path / 'big'}",
                "--out", str(out), "--precision", "fp32", "--workers", "0",
                "--no-progress", *flag]  # fmt: skip
        assert main(args) == 0
        outs[bool(flag)] = open_cache(out).features
    assert not np.allclose(outs[False], outs[True])  # draft really changes the pixels
    full = Embedder("tiny", device="cpu", precision="fp32", draft=False)
    want, _ = full.embed(sorted((big).iterdir()))
    np.testing.assert_allclose(outs[True], want, rtol=1e-5, atol=1e-6)


def test_extract_weights_file_is_used_and_recorded(image_folder, tmp_path, capsys):
    import torch

    from colhead.extract import get_column

    model, _, _ = get_column("tiny").build()
    same, doubled = tmp_path / "same.pt", tmp_path / "doubled.pt"
    torch.save(model.state_dict(), same)
    torch.save({k: v * 2 for k, v in model.state_dict().items()}, doubled)
    base = colhead.extract(data=f"folder:{image_folder}", out=tmp_path / "base.h5", **FAST)
    feats = {}
    for w in (same, doubled):
        out = tmp_path / f"{w.stem}.h5"
        args = ["extract", "--column", "tiny", "--data", f"folder:{image_folder}", "--out",
                str(out), "--weights", str(w), "--precision", "fp32", "--workers", "0",
                "--no-progress"]  # fmt: skip
        assert main(args) == 0
        c = open_cache(out)
        assert c.metadata["column"]["weights_file"] == str(w)
        assert c.identity["weights_sha256"] == colhead.extract._columns.sha256_file(w)
        feats[w.stem] = c.features
    np.testing.assert_allclose(feats["same"], open_cache(base.path).features, rtol=1e-5, atol=1e-6)
    assert not np.allclose(feats["doubled"], feats["same"])
