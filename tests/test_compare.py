"""Heads on caches, the comparison report, and predict — through the CLI, with real files."""

import json

import numpy as np
import pytest
from PIL import Image

import colhead
from colhead.cli import main
from colhead.heads import DEFAULT_HEADS
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
    for r in rows:  # each head, not only the best: random conv features of digits inform
        assert r["top1"] > 0.6, r
    # named after the data and the head, so two tasks never share a file
    assert [r["saved"] for r in rows] == [
        str(tmp_path / "digits-logreg.npz"),
        str(tmp_path / "digits-knn.npz"),
    ]
    # the same task again replaces its own file; another task of the same name gets its own
    main(["heads", "--train", tr, "--test", te, "--head", "knn", "--save", str(tmp_path)])
    assert "-> " + str(tmp_path / "digits-knn.npz") in capsys.readouterr().out
    main(["heads", "--train", te, "--test", tr, "--head", "knn", "--save", str(tmp_path)])
    assert "-> " + str(tmp_path / "digits-knn-2.npz") in capsys.readouterr().out
    main(["heads", "--train", te, "--test", tr, "--head", "knn", "--save", str(tmp_path),
          "--name", "mytask"])  # fmt: skip
    assert (tmp_path / "mytask-knn.npz").is_file()


def test_heads_cli_gives_unlabelled_vectors_to_semi_supervised_heads(
    digit_caches, tmp_path, capsys
):
    from colhead.heads import load_head

    tr, te = digit_caches
    argv = ["heads", "--train", te, "--test", tr, "--head", "ncm,ncm-semi"]
    protos = {}
    for run, extra in (("plain", []), ("unl", ["--unlabelled", tr])):
        out = tmp_path / run
        assert main([*argv, *extra, "--save", str(out), "--json"]) == 0
        for kind in ("ncm", "ncm-semi"):
            head, _ = load_head(out / f"digits-{kind}.npz")
            protos[run, kind] = head.prototypes_
    # without unlabelled vectors ncm-semi is ncm; with them only ncm-semi moves
    np.testing.assert_allclose(protos["plain", "ncm-semi"], protos["plain", "ncm"])
    np.testing.assert_allclose(protos["unl", "ncm"], protos["plain", "ncm"])
    assert not np.allclose(protos["unl", "ncm-semi"], protos["plain", "ncm-semi"])
    other = colhead.extract(
        data="digits", split="test", out=tmp_path / "flip.h5", **{**FAST, "column": "tiny:flip"}
    )
    capsys.readouterr()
    assert main([*argv, "--unlabelled", str(other.path)]) != 0
    assert "the unlabelled cache" in capsys.readouterr().err


def test_heads_prints_data_before_scores(digit_caches, capsys):
    tr, te = digit_caches
    assert main(["heads", "--train", tr, "--test", te, "--head", "knn"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("train: N=") and out[1].startswith("test: N=")
    assert "classes 0 " in out[1] and "majority-class baseline" in out[1]
    assert out[2].startswith("knn ")


def test_heads_on_an_unlabelled_cache_says_so(tmp_path, capsys):
    for i in range(4):
        write_image(tmp_path / "flat" / f"{i}.png", photo(i))
    flat = colhead.extract(data=f"folder:{tmp_path / 'flat'}", out=tmp_path / "u.h5", **FAST)
    assert main(["heads", "--train", flat.path, "--test", flat.path]) == 1
    err = capsys.readouterr().err
    assert "has no labels" in err and "lacks" not in err


def test_heads_val_must_be_of_the_same_column(digit_caches, tmp_path, capsys):
    import torch

    from colhead.extract import get_column

    tr, te = digit_caches
    model, _, _ = get_column("tiny").build()
    state = {k: v + 0.01 for k, v in model.state_dict().items()}  # other weights
    torch.save(state, tmp_path / "w.pt")
    val = colhead.extract(
        data="digits", split="test", out=tmp_path / "v.h5", weights=tmp_path / "w.pt", **FAST
    )
    args = ["heads", "--train", tr, "--test", te, "--head", "logreg", "--val", val.path]
    assert main(args) == 1
    assert "validation cache" in capsys.readouterr().err
    args[-1] = te  # a validation cache of the same column is used
    assert main(args) == 0


def test_heads_cli_rejects_unknown_head(digit_caches, capsys):
    tr, te = digit_caches
    assert main(["heads", "--train", tr, "--test", te, "--head", "logrg"]) == 1
    assert "Did you mean 'logreg'" in capsys.readouterr().err


def test_compare_writes_report_json_and_plots(bigger_folder, tmp_path, capsys):
    out = tmp_path / "rep"
    args = ["compare", "--data", f"folder:{bigger_folder}", "--column", "tiny", "--precision",
            "fp32", "--shots", "2,all", "--repeats", "2", "--scratch-epochs", "3", "--cache-dir",
            str(tmp_path / "c"), "--out", str(out), "--no-progress"]  # fmt: skip
    assert main(args) == 0
    assert "report written" in capsys.readouterr().out
    res = json.loads((out / "results.json").read_text())
    methods = {r["method"] for r in res["rows"]}
    assert methods == {*DEFAULT_HEADS, "scratch"}  # the registry's default set, and scratch
    assert {(r["shots"], r["repeat"]) for r in res["rows"]} == {("2", 0), ("2", 1), ("all", 0)}
    assert all(r["n_train"] == 6 for r in res["rows"] if r["shots"] == "2")
    assert res["n_train"] == 27 and res["n_test"] == 9  # seeded stratified 75/25 split
    assert res["protocol"]["n_val"] == 6  # 20% of each class, never trained on
    assert all(r["n_train"] == 21 for r in res["rows"] if r["shots"] == "all")
    for r in res["rows"]:
        assert 0 <= r["top1"] <= 1 and r["fit_seconds"] > 0
        assert r["top1_ci"][0] <= r["top1"] <= r["top1_ci"][1]
    # colour classes are easy: EVERY method must beat chance clearly with all images (a single
    # broken method fails here, not only all four)
    for r in res["rows"]:
        if r["shots"] == "all":
            assert r["top1"] > 0.6, r
    assert res["best"]["selected_on"] == "validation"
    assert res["best"]["method"] in methods and res["best_head"]["method"] != "scratch"
    for png in ("accuracy_by_method", "accuracy_vs_shots", "confusion_best_head", "train_time",
                "embedding_map", "per_class_accuracy"):  # fmt: skip
        with Image.open(out / f"{png}.png") as im:
            assert im.size[0] > 300
    report = (out / "report.md").read_text()
    assert report.startswith("# tiny (random weights, not pretrained) on imgs")
    assert "**Warning:** The column tiny has random weights" in report
    assert "**Warning:** Only 9 test images" in report
    assert "| scratch |" in report and "accuracy_vs_shots.png" in report
    assert "seeded stratified" in report and "weights sha256" in report
    assert "chosen on validation" in report and "no augmentation" in report


def test_compare_split_folder_report_folders(tmp_path, monkeypatch, capsys):
    root = tmp_path / "shapes"
    for split, n in (("train", 8), ("val", 2), ("test", 4)):
        for c, name in enumerate(["cat", "dog", "eel"]):
            for i in range(n):
                write_image(root / split / name / f"{i}.png", photo(50 * c + i + n, cls=c))
    monkeypatch.chdir(tmp_path)
    common = ["--column", "tiny", "--precision", "fp32", "--shots", "all", "--head", "knn,ncm",
              "--no-scratch", "--cache-dir", str(tmp_path / "c"), "--no-progress"]  # fmt: skip
    assert main(["compare", "--data", f"folder:{root}", *common]) == 0
    first = tmp_path / "reports" / "shapes"
    res = json.loads((first / "results.json").read_text())
    assert (res["n_train"], res["n_test"]) == (24, 12)  # the folder's own splits
    assert res["protocol"]["validation"] == "the data's own validation split"
    assert res["protocol"]["n_val"] == 6 and res["protocol"]["n_pool"] == 24
    report = (first / "report.md").read_text()
    assert "scratch" not in report.lower()  # only what ran
    # a second report never overwrites the first: it is written beside it
    split_args = [
        "--train-data",
        f"folder:{root / 'train'}",
        "--test-data",
        f"folder:{root / 'test'}",
    ]
    assert main(["compare", *split_args, *common]) == 0
    assert (tmp_path / "reports" / "shapes-2" / "report.md").is_file()
    (first / "marker.png").write_bytes(b"")
    assert main(["compare", "--data", f"folder:{root}", "--force", *common]) == 0
    assert not (first / "marker.png").exists() and (first / "report.md").is_file()
    assert not (tmp_path / "reports" / "shapes-3").exists()
    capsys.readouterr()


@pytest.fixture
def saved_head(image_folder, tmp_path):
    tr = colhead.extract(data=f"folder:{image_folder}", out=tmp_path / "f.h5", **FAST)
    from colhead.compare import train_heads

    (row,) = train_heads(
        tr.path, tr.path, heads=["logreg"], save_dir=tmp_path / "heads", log=lambda s: None
    )
    assert row["saved"] == str(tmp_path / "heads" / "imgs-logreg.npz")  # the data's name
    return tmp_path / "heads" / "imgs-logreg.npz", tr.path


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
        main(
            [
                "predict",
                "--head-file",
                str(head_path),
                "--precision",
                "fp32",
                str(files[0]),
                str(bad),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0].split("\t")[1] == got[0] and "error: not an image" in out[1]


def test_predict_refuses_a_head_of_another_column(saved_head, capsys):
    head_path, _ = saved_head
    assert (
        main(["predict", "--head-file", str(head_path), "--column", "efficientnet_lite0", "x.jpg"])
        == 1
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
    from colhead.heads._protocol import few_shot_indices

    y = np.repeat(np.arange(3), [10, 2, 10])
    a, b = few_shot_indices(y, 5, seed=1), few_shot_indices(y, 5, seed=1)
    assert (a == b).all() and np.bincount(y[a]).tolist() == [5, 2, 5]
    assert not (few_shot_indices(y, 5, seed=2) == a).all()
