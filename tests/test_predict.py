"""``colhead predict``: image files, whole data sets to CSV, cache reuse, guards and options.

Real files, the tiny column on the CPU with torch (fast and deterministic), called in-process
through ``main([...])``.
"""

import csv
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import colhead
import colhead.extract
from colhead import service
from colhead.cli import main
from colhead.compare import head_meta
from colhead.heads import LogRegHead, save_head
from conftest import photo, write_image

TORCH = ["--device", "cpu", "--precision", "fp32", "--backend", "torch"]
CLASSES = ["cat", "dog", "eel"]


@pytest.fixture(scope="module")
def split_folder(tmp_path_factory):
    """root/{train,test}/<class>/ with 3 classes: 4 train and 2 test images each."""
    root = tmp_path_factory.mktemp("predict") / "data"
    for c, name in enumerate(CLASSES):
        for i in range(4):
            write_image(root / "train" / name / f"{name}{i}.png", photo(c * 10 + i, cls=c))
        for i in range(2):
            write_image(root / "test" / name / f"{name}{i}.jpg", photo(100 + c * 10 + i, cls=c))
    return root


@pytest.fixture(scope="module")
def head_file(split_folder):
    out = split_folder.parent / "train.h5"
    colhead.extract(
        "tiny",
        f"folder:{split_folder}",
        split="train",
        out=out,
        workers=0,
        progress=False,
        device="cpu",
        precision="fp32",
        backend="torch",
    )
    cache = colhead.open_cache(out)
    head = LogRegHead(C=1.0).fit(cache.features, cache.labels)
    return save_head(head, split_folder.parent / "colours.npz", meta=head_meta(cache))


def predictor(head_file):
    return service.Predictor(head_file, device="cpu", precision="fp32", backend="torch")


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_data_to_csv_matches_the_predictor_on_each_file(head_file, split_folder, tmp_path, capsys):
    out = tmp_path / "preds.csv"
    argv = ["predict", "--head-file", str(head_file), "--data", f"folder:{split_folder}"]
    assert main([*argv, "--split", "test", "--top", "2", "--out", str(out), *TORCH]) == 0
    rows = read_csv(out)
    assert list(rows[0]) == ["id", "label", "probability", "label_2", "probability_2"]
    ids = [r["id"] for r in rows]
    assert ids == sorted(ids) and len(ids) == 6 and all(i.startswith("test/") for i in ids)
    want = predictor(head_file).predict([split_folder / i for i in ids], top=2)
    for r, w in zip(rows, want):
        assert r["label"] == w["label"] and r["label_2"] == w["top"][1]["label"]
        assert float(r["probability"]) == pytest.approx(w["probability"], abs=1e-5)
    assert "wrote 6 predictions" in capsys.readouterr().err


def test_a_bad_item_fails_the_exit_status_and_is_named_on_stderr(head_file, tmp_path, capsys):
    folder = tmp_path / "imgs"
    write_image(folder / "good.png", photo(1))
    (folder / "broken.jpg").write_bytes(b"this is not an image")
    out = tmp_path / "p.csv"
    argv = ["predict", "--head-file", str(head_file), "--data", f"folder:{folder}"]
    assert main([*argv, "--out", str(out), *TORCH]) == 1
    err = capsys.readouterr().err
    assert "error: broken.jpg: not an image" in err and "1 images could not be labelled" in err
    assert [r["id"] for r in read_csv(out)] == ["good.png"]
    # Printed rather than written: the same exit status, the error on stderr, not stdout.
    assert main([*argv, *TORCH]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("good.png\t") and "broken.jpg" not in captured.out
    assert "error: broken.jpg: not an image" in captured.err


def test_a_cache_is_filled_then_reused_without_running_the_column(
    head_file, split_folder, tmp_path, monkeypatch
):
    cache = tmp_path / "test.h5"
    argv = ["predict", "--head-file", str(head_file), "--data", f"folder:{split_folder}"]
    argv += ["--split", "test", "--cache", str(cache), *TORCH]
    assert main([*argv, "--out", str(tmp_path / "a.csv")]) == 0
    assert colhead.open_cache(cache).complete
    first = read_csv(tmp_path / "a.csv")
    # vectors from the cache give the in-memory answers
    want = predictor(head_file).predict([split_folder / r["id"] for r in first])
    assert [r["label"] for r in first] == [w["label"] for w in want]

    def no_forward(self, batch):
        raise AssertionError("the column ran although the cache held every vector")

    monkeypatch.setattr(colhead.extract.Embedder, "forward", no_forward)
    assert main([*argv, "--out", str(tmp_path / "b.csv")]) == 0
    assert read_csv(tmp_path / "b.csv") == first


def test_a_cache_of_other_data_is_refused(head_file, split_folder, tmp_path, capsys):
    cache = tmp_path / "test.h5"
    base = ["predict", "--head-file", str(head_file), "--data", f"folder:{split_folder}"]
    assert main([*base, "--split", "test", "--cache", str(cache), *TORCH]) == 0
    capsys.readouterr()
    assert main([*base, "--split", "train", "--cache", str(cache), *TORCH]) == 1
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize("k", [1, 2, 3])
def test_top_ranks_k_labels(head_file, split_folder, capsys, k):
    image = split_folder / "test" / "dog" / "dog0.jpg"
    argv = ["predict", "--head-file", str(head_file), "--top", str(k), "--json", *TORCH]
    assert main([*argv, str(image)]) == 0
    (r,) = json.loads(capsys.readouterr().out)
    probs = [t["probability"] for t in r["top"]]
    assert len(r["top"]) == k and probs == sorted(probs, reverse=True)
    assert r["top"][0]["label"] == r["label"] and r["label"] in CLASSES
    assert (
        main(["predict", "--head-file", str(head_file), "--top", str(k), *TORCH, str(image)]) == 0
    )
    line = capsys.readouterr().out.strip().split("\t")
    assert len(line) == (3 if k == 1 else 4) and (k == 1 or line[3].count(",") == k - 2)


def test_top_zero_is_a_usage_error(head_file, capsys):
    with pytest.raises(SystemExit) as e:
        main(["predict", "--head-file", str(head_file), "--top", "0", "x.png"])
    assert e.value.code == 2 and "--top must be >= 1" in capsys.readouterr().err


def test_device_reaches_the_column(head_file, split_folder, monkeypatch, capsys):
    seen = []
    real = colhead.extract.Embedder

    class Spy(real):
        def __init__(self, *a, **kw):
            seen.append((kw.get("device"), kw.get("backend")))
            super().__init__(*a, **kw)

    monkeypatch.setattr(colhead.extract, "Embedder", Spy)
    image = str(split_folder / "test" / "cat" / "cat0.jpg")
    argv = ["predict", "--head-file", str(head_file), "--precision", "fp32", "--backend", "torch"]
    assert main([*argv, "--device", "cpu", image]) == 0
    assert seen == [("cpu", "torch")]
    capsys.readouterr()
    assert main([*argv, "--device", "tpu", image]) == 1
    assert "tpu" in capsys.readouterr().err


def test_the_old_head_flag_still_works_with_a_warning(head_file, split_folder, capsys):
    image = str(split_folder / "test" / "eel" / "eel0.jpg")
    assert main(["predict", "--head", str(head_file), *TORCH, image]) == 0
    captured = capsys.readouterr()
    assert "--head is deprecated; use --head-file" in captured.err
    assert captured.out.split("\t")[1] in CLASSES
    with pytest.raises(SystemExit):
        main(["predict", "--head", str(head_file), "--head-file", str(head_file), image])
    assert "give the head file once" in capsys.readouterr().err


def test_a_cache_given_as_the_head_is_named_for_what_it_is(split_folder, capsys):
    cache = split_folder.parent / "train.h5"
    assert main(["predict", "--head-file", str(cache), *TORCH, "x.png"]) == 1
    err = capsys.readouterr().err
    assert "is a feature cache (HDF5), not a head file" in err and "allow_pickle" not in err


def test_usage_errors_before_anything_loads(head_file, capsys):
    for argv, words in [
        (["predict", "x.png"], "--head-file"),
        (["predict", "--head-file", str(head_file)], "either image files or --data"),
        (["predict", "--head-file", str(head_file), "--cache", "c.h5", "x.png"], "needs --data"),
    ]:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and words in capsys.readouterr().err


def test_out_must_be_a_csv(head_file, split_folder, tmp_path, capsys):
    argv = ["predict", "--head-file", str(head_file), "--data", f"folder:{split_folder}"]
    assert main([*argv, "--split", "test", "--out", str(tmp_path / "p.h5"), *TORCH]) == 1
    assert "ending in .csv" in capsys.readouterr().err
    assert not (tmp_path / "p.h5").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes")
def test_pipes_and_devices_among_the_images_do_not_hang(head_file, split_folder, tmp_path, capsys):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    image = str(split_folder / "test" / "cat" / "cat0.jpg")
    argv = ["predict", "--head-file", str(head_file), "--json", *TORCH, image, str(fifo)]
    argv.append("/dev/zero")
    result = {}
    t = threading.Thread(target=lambda: result.update(rc=main(argv)), daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), "predict hung on a named pipe or a device"
    good, pipe, zero = json.loads(capsys.readouterr().out)
    assert good["label"] in CLASSES
    assert "not a regular file" in pipe["error"] and "not a regular file" in zero["error"]


def test_every_per_image_failure_is_that_images_answer(head_file, split_folder, monkeypatch):
    pred = predictor(head_file)
    real = pred.embedder.preprocess

    def preprocess(data):
        if isinstance(data, bytes) and data == b"huge":
            raise MemoryError()
        return real(data)

    monkeypatch.setattr(pred.embedder, "preprocess", preprocess)
    good = split_folder / "test" / "cat" / "cat0.jpg"
    answers = pred.predict([good, b"huge", np.zeros((3, 3, 3), np.uint8)])
    assert answers[0]["label"] in CLASSES and "out of memory" in answers[1]["error"]
    assert "label" in answers[2]


def test_import_colhead_service_stays_light():
    code = (
        "import sys, colhead.service as s; s.Predictor; "
        "print(sorted(m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
