"""The comparison's protocol and report on synthetic results: selection, intervals, wording."""

import json

import numpy as np
import pytest

from colhead.compare import data_name, report_dir, resolve_specs
from colhead.heads import Method, run_comparison, write_report
from colhead.heads._plots import extraction_note
from colhead.heads._stats import natural_order, t_interval, wilson


class _ReadsColumn:
    """A stand-in head that predicts the class written in one feature column."""

    def __init__(self, col: int):
        self.col = col

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        return self

    def predict_proba(self, X):
        pred = np.clip(np.rint(X[:, self.col]), 0, 2).astype(int)
        return np.eye(3)[pred]


def test_best_method_is_chosen_on_validation_not_on_test():
    # Training images (and so the validation split carved from them) carry the label in column
    # 0; the test images carry it in column 1. "first" wins on validation, "second" on test:
    # choosing on test would pick "second".
    rng = np.random.default_rng(0)
    y_tr, y_te = np.repeat(np.arange(3), 10), np.repeat(np.arange(3), 10)
    X_tr = np.c_[y_tr, rng.integers(0, 3, 30)].astype(float)
    X_te = np.c_[rng.integers(0, 3, 30), y_te].astype(float)
    methods = [
        Method("second", lambda n: _ReadsColumn(1)),
        Method("first", lambda n: _ReadsColumn(0)),
    ]
    res = run_comparison(
        methods, {"features": (X_tr, X_te)}, y_tr, y_te, n_classes=3, shots=[2, "all"],
        repeats=2, log=lambda s: None,
    )  # fmt: skip
    by = {(s["method"], s["shots"]): s for s in res["summary"]}
    assert by[("second", "all")]["top1"] > by[("first", "all")]["top1"]  # test prefers second
    assert res["best"]["method"] == "first" and res["best"]["selected_on"] == "validation"
    assert res["best"]["test"] == by[("first", "all")]["balanced_accuracy"]
    assert [b["method"] for b in res["best"]["by_shots"]] == ["first", "first"]
    assert res["protocol"]["n_val"] == 6 and res["protocol"]["n_pool"] == 24
    # the validation images are never trained on: every "all" fit saw the 24 others only
    assert all(r["n_train"] == 24 for r in res["rows"] if r["shots"] == "all")


def test_intervals():
    lo, hi = wilson(5, 10)  # textbook value: 0.237..0.763
    assert (round(lo, 3), round(hi, 3)) == (0.237, 0.763)
    assert wilson(10, 10)[1] == 1.0 and wilson(0, 10)[0] == 0.0
    assert wilson(10, 10)[0] == pytest.approx(0.722, abs=1e-3)
    lo, hi = t_interval([0.5, 0.6, 0.7])  # t(0.975, 2) = 4.303, s = 0.1
    assert (lo, hi) == pytest.approx(
        (0.6 - 4.303 * 0.1 / 3**0.5, 0.6 + 4.303 * 0.1 / 3**0.5), abs=1e-3
    )


def test_natural_class_order():
    names = ["p1.00", "p0.00", "p0.33", "p0.67"]  # elpv's own order
    assert [names[i] for i in natural_order(names)] == ["p0.00", "p0.33", "p0.67", "p1.00"]
    names = ["img10", "img2", "Img1"]
    assert [names[i] for i in natural_order(names)] == ["Img1", "img2", "img10"]


def _results(*, scratch: bool, pretrained: bool, n_test: int) -> dict:
    rng = np.random.default_rng(0)
    y_tr, y_te = np.repeat(np.arange(3), 8), np.repeat(np.arange(3), n_test // 3)
    X_tr, X_te = rng.normal(size=(24, 4)) + y_tr[:, None], rng.normal(size=(len(y_te), 4))
    X_te += y_te[:, None]
    from colhead.heads import make_head_for

    methods = [Method(h, lambda n, h=h: make_head_for(h, n)) for h in ("knn", "ncm")]
    if scratch:
        methods.append(Method("scratch", lambda n: make_head_for("knn", n)))
    res = run_comparison(
        methods, {"features": (X_tr, X_te)}, y_tr, y_te, n_classes=3, shots=[1, "all"],
        repeats=2, log=lambda s: None,
    )  # fmt: skip
    res.update(
        dataset="toy", column="col", pretrained=pretrained, classes=["b", "a10", "a2"],
        n_train=24, n_test=len(y_te), chance=1 / 3, provenance={"column": "col"},
        extraction={"seconds": 0.0, "written": 0, "reused": 30, "one_off_seconds": None},
    )  # fmt: skip
    return res, y_te, X_te


@pytest.mark.parametrize("scratch", [False, True])
def test_report_says_only_what_ran_and_warns(tmp_path, scratch):
    res, y_te, X_te = _results(scratch=scratch, pretrained=False, n_test=30)
    path = write_report(res, tmp_path, y_test=y_te, test_features=X_te)
    text = path.read_text()
    assert text.startswith("# col (random weights, not pretrained) on toy")
    assert ("scratch" in text.lower()) == scratch  # no scratch wording without a scratch row
    head = text.split("\n\n")[1]  # the warnings come right after the title
    assert "random weights" in head and "Only 30 test images" in head
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["best"]["selected_on"] == "validation" and len(saved["warnings"]) == 2
    assert [r["class"] for r in saved["per_class"]] == ["b", "a10", "a2"]
    assert "| a2 |" in text.split("| a10 |")[0]  # natural order in the per-class table
    assert "features reused from existing caches (30 rows): not timed" in text
    for png in ("embedding_map", "per_class_accuracy", "accuracy_vs_shots", "train_time"):
        assert (tmp_path / f"{png}.png").stat().st_size > 1000


def test_no_warning_for_a_pretrained_column_on_enough_images(tmp_path):
    res, y_te, _ = _results(scratch=False, pretrained=True, n_test=120)
    text = write_report(res, tmp_path, y_test=y_te).read_text()
    assert "Warning" not in text and text.startswith("# col (pretrained) on toy")
    assert "[" in text.split("Test balanced accuracy")[1]  # intervals beside every accuracy


def test_extraction_note_never_calls_reuse_a_one_off_cost():
    assert "reused" in extraction_note({"seconds": 0.4, "written": 0, "reused": 900})
    est = extraction_note({"seconds": 10.0, "written": 100, "reused": 300, "one_off_seconds": 40})
    assert "estimated" in est and "300 reused" in est


def test_data_names_and_report_folders(tmp_path):
    assert data_name("folder:/data/flowers/") == "flowers"
    assert data_name("folder:/data/flowers/train") == "flowers"  # a split folder: its root
    assert data_name("folder:/data/flowers?split=train") == "flowers"
    assert data_name("csv:/x/labels.csv") == "labels"
    assert data_name("elpv:defect:test") == "elpv-defect" and data_name("digits") == "digits"
    out = tmp_path / "reports" / "flowers"
    assert report_dir(out) == out
    out.mkdir(parents=True)
    (out / "report.md").write_text("old")
    assert report_dir(out) == out.parent / "flowers-2"  # never overwritten without --force
    (out.parent / "flowers-2").mkdir()
    assert report_dir(out) == out.parent / "flowers-3"
    assert report_dir(out, force=True) == out and not out.exists()
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not part of a report"):
        report_dir(out, force=True)


def test_data_specs(tmp_path):
    for split in ("train", "val", "test"):
        (tmp_path / "d" / split / "a").mkdir(parents=True)
    got = resolve_specs(f"folder:{tmp_path / 'd'}")
    assert {k: v[1] for k, v in got.items()} == {"train": "train", "test": "test", "val": "val"}
    assert resolve_specs("csv:x.csv") == {"all": ("csv:x.csv", None)}
    assert resolve_specs("elpv")["test"] == ("elpv", "test")
    with pytest.raises(ValueError, match="go together"):
        resolve_specs(None, train_data="digits")
    with pytest.raises(ValueError, match="both name the data"):
        resolve_specs("digits", train_data="a", test_data="b")


def test_repeats_that_agree_keep_the_test_sets_interval():
    from colhead.heads._protocol import summarise

    rows = [
        {"method": "m", "shots": "5", "repeat": r, "n_train": 10, "top1": 1.0,
         "top1_ci": [0.72, 1.0], "balanced_accuracy": 1.0, "balanced_accuracy_ci": [0.7, 1.0],
         "macro_f1": 1.0, "fit_seconds": 0.1, "predict_seconds": 0.1}
        for r in range(3)
    ]  # fmt: skip
    (s,) = summarise(rows)
    assert s["top1_ci"] == pytest.approx([0.72, 1.0])
    assert s["balanced_accuracy_ci"] == pytest.approx([0.7, 1.0])
