"""Heads on caches, the comparison report, and predict — through the CLI, with real files."""

import json

import numpy as np
import pytest
from PIL import Image

import colhead
from colhead.cli import main
from colhead.service import HeadColumnMismatch, Predictor
from conftest import photo, write_image

FAST = dict(column="tiny", precision="fp32", workers=0, progress=False)


@pytest.fixture(scope="module")
def digit_caches(tmp_path_factory):
    d = tmp_path_factory.mktemp("caches")
    tr = colhead.extract(data="digits", split="train", out=d / "train.h5", **FAST)
    te = colhead.extract(data="digits", split="test", out=d / "test.h5", **FAST)
    return tr.path, te.path


def test_heads_cli_trains_scores_and_saves(digit_caches, tmp_path, capsys):
    tr, te = digit_caches
    assert (
        main(
            [
                "heads",
                "--train",
                tr,
                "--test",
                te,
                "--head",
                "logreg,knn",
                "--save",
                str(tmp_path),
                "--json",
            ]
        )
        == 0
    )
    rows = json.loads(capsys.readouterr().out)
    assert [r["head"] for r in rows] == ["logreg", "knn"]
    assert rows[0]["top1"] > 0.6  # random conv features of digits are still informative
    assert (tmp_path / "logreg.npz").is_file() and (tmp_path / "knn.npz").is_file()


def test_heads_cli_rejects_unknown_head(digit_caches, capsys):
    tr, te = digit_caches
    assert main(["heads", "--train", tr, "--test", te, "--head", "logrg"]) == 1
    assert "Did you mean 'logreg'" in capsys.readouterr().err


@pytest.fixture
def bigger_folder(image_folder):
    for c, name in enumerate(["cat", "dog", "eel"]):  # 12 per class
        for i in range(4, 12):
            write_image(image_folder / name / f"x{i}.png", photo(100 + 20 * c + i, cls=c))
    return image_folder


def test_compare_writes_report_json_and_plots(bigger_folder, tmp_path, capsys):
    out = tmp_path / "rep"
    assert (
        main(
            [
                "compare",
                "--data",
                f"folder:{bigger_folder}",
                "--column",
                "tiny",
                "--precision",
                "fp32",
                "--shots",
                "2,all",
                "--repeats",
                "2",
                "--scratch-epochs",
                "2",
                "--cache-dir",
                str(tmp_path / "c"),
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert "report written" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in res["rows"]}
    assert methods == {"logreg", "mlp", "knn", "scratch"}
    assert {(r["shots"], r["repeat"]) for r in res["rows"]} == {("2", 0), ("2", 1), ("all", 0)}
    assert all(r["n_train"] == 6 for r in res["rows"] if r["shots"] == "2")
    assert res["n_train"] == 27 and res["n_test"] == 9  # seeded stratified 75/25 split
    for r in res["rows"]:
        assert 0 <= r["top1"] <= 1 and r["fit_seconds"] > 0
    # colour classes are easy: the heads must beat chance clearly with all images
    assert max(r["top1"] for r in res["rows"] if r["shots"] == "all") > 0.6
    for png in ("accuracy_by_method", "accuracy_vs_shots", "confusion_best_head", "train_time"):
        with Image.open(out / f"{png}.png") as im:
            assert im.size[0] > 300
    report = (out / "report.md").read_text()
    assert "| scratch |" in report and "accuracy_vs_shots.png" in report
    assert "seeded stratified" in report and "weights sha256" in report


@pytest.fixture
def saved_head(image_folder, tmp_path):
    tr = colhead.extract(data=f"folder:{image_folder}", out=tmp_path / "f.h5", **FAST)
    from colhead.compare import train_heads

    train_heads(tr.path, tr.path, heads=["logreg"], save_dir=tmp_path / "heads", log=lambda s: None)
    return tmp_path / "heads" / "logreg.npz", tr.path


def test_predict_matches_the_head_on_cached_vectors(saved_head, image_folder, capsys):
    head_path, cache_path = saved_head
    cache = colhead.open_cache(cache_path)
    pred = Predictor(head_path, precision="fp32")
    files = [image_folder / i for i in cache.ids]
    got = [r["label"] for r in pred.predict(files)]
    want = [cache.classes[i] for i in pred.head.predict(cache.features)]
    assert got == want
    bad = image_folder / "bad.jpg"
    bad.write_bytes(b"nope")
    assert (
        main(["predict", "--head", str(head_path), "--precision", "fp32", str(files[0]), str(bad)])
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t")[1] == got[0] and "error: not an image" in out[1]


def test_predict_refuses_a_head_of_another_column(saved_head, capsys):
    head_path, _ = saved_head
    assert (
        main(["predict", "--head", str(head_path), "--column", "efficientnet_lite0", "x.jpg"]) == 1
    )
    assert "trained on vectors of column 'tiny'" in capsys.readouterr().err
    from colhead.heads import load_head, save_head

    head, meta = load_head(head_path)
    meta["column_key"] = "0" * 64  # same name, other weights or preprocessing
    save_head(head, head_path, meta=meta)
    with pytest.raises(HeadColumnMismatch, match="weights sha256"):
        Predictor(head_path, precision="fp32")


def test_shot_parsing():
    from colhead.heads import parse_shots

    assert parse_shots("all,10,1,5") == [1, 5, 10, "all"]
    with pytest.raises(ValueError, match="positive integers"):
        parse_shots("1,0")


def test_few_shot_sampling_is_per_class_and_seeded():
    from colhead.heads._compare import few_shot_indices

    y = np.repeat(np.arange(3), [10, 2, 10])
    a, b = few_shot_indices(y, 5, seed=1), few_shot_indices(y, 5, seed=1)
    assert (a == b).all() and np.bincount(y[a]).tolist() == [5, 2, 5]
    assert not (few_shot_indices(y, 5, seed=2) == a).all()
