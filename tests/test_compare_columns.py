"""Which column for my data (issue 15): several columns ranked on the same splits and shots,
and the finetune / scratch-column rows — in process, on a handful of real image files."""

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from colhead.cli import main
from colhead.compare._columns import aligned_features, parse_columns
from colhead.compare._finetune import ColumnClassifier, ColumnTrainConfig
from conftest import photo


@pytest.fixture
def folder(bigger_folder):
    return bigger_folder


@pytest.fixture
def twin():
    """``tiny-twin``: the tiny column under another name (the same vectors, another cache)."""
    from colhead.extract import _registry, get_column, register_column

    register_column(dataclasses.replace(get_column("tiny"), name="tiny-twin"))
    yield "tiny-twin"
    _registry._REGISTRY.pop("tiny-twin")


def _compare(folder, tmp_path, columns, *extra, repeats="2"):
    out = tmp_path / "rep"
    args = ["compare", "--data", f"folder:{folder}", "--column", columns, "--precision", "fp32",
            "--shots", "2,all", "--repeats", repeats, "--cache-dir", str(tmp_path / "c"), "--out",
            str(out), "--no-progress", *extra]  # fmt: skip
    assert main(args) == 0
    return out, json.loads((out / "results.json").read_text())


@pytest.mark.slow  # ~50 s on 2 loaded cores: three columns extracted, fitted, reported
def test_columns_ranked_on_the_same_splits_and_shots(folder, tmp_path, twin, capsys):
    out, res = _compare(
        folder, tmp_path, f"tiny,tiny:stages,{twin}", "--no-scratch", "--head", "knn,ncm"
    )
    ranked = res["columns"]
    assert ranked["selected_on"] == "validation"
    cols = {c["column"]: c for c in ranked["columns"]}
    assert set(cols) == {"tiny", "tiny:stages", twin}
    assert cols["tiny"]["dim"] == 32 and cols["tiny:stages"]["dim"] == 80  # 16 + 32 + 32
    for c in cols.values():
        assert [b["shots"] for b in c["by_shots"]] == ["2", "all"]
        for b in c["by_shots"]:
            assert b["method"] in ("knn", "ncm") and b["selected_on"] == "validation"
            assert b["test_ci"][0] <= b["test"] <= b["test_ci"][1]
    # the same vectors under two names: identical choices and scores only if every column is
    # trained on the same labelled images and chosen on the same validation split
    assert cols["tiny"]["by_shots"] == cols[twin]["by_shots"]
    # the first column's entry is the main comparison's own best head (no second run)
    main_best = {b["shots"]: b for b in res["best"]["by_shots"]}
    for b in cols["tiny"]["by_shots"]:
        assert (
            b["test"] == main_best[b["shots"]]["test"]
            or b["method"] != main_best[b["shots"]]["method"]
        )
    vals = [np.mean([b["validation"] for b in c["by_shots"]]) for c in ranked["columns"]]
    assert vals == sorted(vals, reverse=True)  # ordered on validation
    assert [b["shots"] for b in ranked["best_column_by_shots"]] == ["2", "all"]
    assert ranked["references"] == {}  # no scratch ran: no reference rows
    report = (out / "report.md").read_text()
    assert "## Which column" in report and "| tiny:stages | 80 |" in report
    assert "columns.png" in report and "each extracted on its own" in report
    with Image.open(out / "columns.png") as im:
        assert im.size[0] > 300
    capsys.readouterr()


def test_one_column_has_no_ranking(folder, tmp_path, capsys):
    out, res = _compare(folder, tmp_path, "tiny", "--no-scratch", "--head", "ncm")
    assert "columns" not in res and not (out / "columns.png").exists()
    assert "Which column" not in (out / "report.md").read_text()
    capsys.readouterr()


@pytest.mark.slow  # ~80 s on 2 loaded cores: two networks trained end to end at 4 settings
def test_finetune_and_scratch_column_rows(folder, tmp_path, capsys):
    out, res = _compare(
        folder, tmp_path, "tiny,tiny:stages", "--head", "ncm", "--scratch-epochs", "2",
        "--finetune", "--scratch-column", "--column-epochs", "1", repeats="1",
    )  # fmt: skip
    rows = [r for r in res["rows"] if r["method"] in ("finetune", "scratch-column")]
    assert {(r["method"], r["shots"]) for r in rows} == {
        (m, s) for m in ("finetune", "scratch-column") for s in ("2", "all")
    }
    for r in rows:
        assert r["n_train"] == (6 if r["shots"] == "2" else 21) and r["fit_seconds"] > 0
    # colour classes: the tiny network trained end to end learns them with all images
    for r in rows:
        if r["shots"] == "all":
            assert r["top1"] > 0.6, r
    refs = res["columns"]["references"]
    assert set(refs) == {"scratch", "finetune", "scratch-column"}
    assert res["best_head"]["method"] == "ncm"  # a trained network is never the best *head*
    prov = res["provenance"]
    assert "BatchNorm statistics frozen" in prov["finetune"]
    assert "re-initialised" in prov["scratch-column"]
    report = (out / "report.md").read_text()
    assert "| *finetune* (reference) |" in report and "| finetune |" in report
    capsys.readouterr()


def test_scratch_column_starts_from_other_weights(tmp_path):
    from colhead.extract import get_column

    spec = get_column("tiny")
    X = np.stack([np.asarray(photo(i, size=(32, 32), cls=i % 3)) for i in range(6)])
    y = np.arange(6) % 3
    cfg = ColumnTrainConfig(epochs=1, min_steps=1, precision="fp32", device="cpu")
    kw = dict(mean=spec.preprocess.mean, std=spec.preprocess.std, size=32, config=cfg)
    pre = ColumnClassifier(lambda: spec.build(None)[0], pretrained=True, **kw)
    scr = ColumnClassifier(lambda: spec.build(None)[0], pretrained=False, **kw)
    w_built = spec.build(None)[0][0].weight.detach()
    assert np.allclose(pre._model(3)[0][0].weight.detach(), w_built)
    assert not np.allclose(scr._model(3)[0][0].weight.detach(), w_built)
    p = scr.fit(X, y).predict_proba(X)
    assert p.shape == (6, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    with pytest.raises(ValueError, match="Expected uint8 images"):
        scr.fit(X.astype(np.float32), y)


class FakeCache:
    def __init__(self, ids, features, path="c.h5"):
        self.ids, self.features, self.path = np.asarray(ids), features, path
        self.identity, self.metadata = {"precision": "fp32"}, {"column": {"source": "x"}}


def test_rank_columns_uses_the_first_columns_splits_and_shots(tmp_path):
    """Vectors unrelated to the labels: scores depend on which images are labelled, so equal
    entries for the same vectors under two names prove one split and one set of shots."""
    from colhead.compare._columns import rank_columns
    from colhead.heads import Method, make_head_for, run_comparison

    rng = np.random.default_rng(0)
    n = {"train": 60, "test": 30}
    ids = {r: [f"{r}{i}" for i in range(k)] for r, k in n.items()}
    X = {r: rng.normal(size=(k, 8)) for r, k in n.items()}
    y = {r: rng.integers(0, 3, k) for r, k in n.items()}
    heads = ["knn", "ncm"]
    protocol = dict(y_train=y["train"], y_test=y["test"], n_classes=3, shots=[2, 5, "all"],
                    repeats=2, seed=0, y_val=None)  # fmt: skip
    methods = [Method(h, lambda k, h=h: make_head_for(h, k)) for h in heads]
    first = run_comparison(methods, {"features": (X["train"], X["test"])}, log=print, **protocol)
    arr = {r: (y[r], X[r], ids[r], None) for r in n}
    rev = {r: np.arange(n[r])[::-1] for r in n}  # the same vectors stored in another order

    def extract_all(specs, column):
        if column == "twin":
            caches = {r: FakeCache(np.asarray(ids[r])[rev[r]], X[r][rev[r]]) for r in n}
        else:  # another column: other vectors
            caches = {r: FakeCache(ids[r], rng.normal(size=(n[r], 8))) for r in n}
        return None, caches, {"seconds": 0.0}

    ranked = rank_columns(
        ["first", "twin", "other"], first | {"pretrained": True}, specs={}, arr=arr,
        roles=["train", "test"], heads=heads, protocol=protocol, extract_all=extract_all,
        log=lambda s: None,
    )  # fmt: skip
    cols = {c["column"]: c for c in ranked["columns"]}
    assert cols["first"]["by_shots"] == cols["twin"]["by_shots"]
    assert cols["first"]["by_shots"] != cols["other"]["by_shots"]
    assert [b["shots"] for b in ranked["best_column_by_shots"]] == ["2", "5", "all"]
    # the report's section and plot read it: one row per column, one bold winner per shot count
    from colhead.heads._columns_report import columns_section, plot_columns

    lines = columns_section({"columns": ranked})
    assert "| column | dims | 2 | 5 | all |" in lines
    rows = [ln for ln in lines if ln.startswith("| first") or ln.startswith("| twin")]
    rows += [ln for ln in lines if ln.startswith("| other")]
    assert len(rows) == 3 and sum(ln.count("**") // 2 for ln in rows) == 3
    for b in ranked["best_column_by_shots"]:  # the winner's own cell is the bold one
        (row,) = [ln for ln in rows if ln.startswith(f"| {b['column']} |")]
        assert f"**{100 * b['test']:.1f}" in row
    assert plot_columns({"columns": ranked, "classes": ["a", "b", "c"]}, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as im:
        assert im.size[0] > 300


def test_parse_and_align():
    assert parse_columns(" a, b,a ") == ["a", "b"]
    with pytest.raises(ValueError, match="names no column"):
        parse_columns(" , ")

    class Cache:
        ids = np.array(["x", "y", "z"])
        features = np.arange(6.0).reshape(3, 2)
        path = "c.h5"

    assert aligned_features(Cache, ["z", "x"], "test").tolist() == [[4, 5], [0, 1]]
    with pytest.raises(ValueError, match="lacks 1 of the first column's images"):
        aligned_features(Cache, ["x", "w"], "test")


def test_column_lines_never_take_a_references_colour(tmp_path, monkeypatch):
    import matplotlib.axes
    from matplotlib.colors import to_hex

    from colhead.heads._columns_report import REF_STYLE, plot_columns

    seen = []
    errorbar = matplotlib.axes.Axes.errorbar

    def spy(self, *args, **kwargs):
        seen.append(to_hex(kwargs["color"]))
        return errorbar(self, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy)
    shot = [{"shots": "1", "test": 0.5, "test_ci": [0.4, 0.6]}]
    cols = [{"column": f"c{k}", "dim": 8, "by_shots": shot} for k in range(6)]
    refs = {name: [{"shots": "1", "test": 0.3}] for name in REF_STYLE}
    results = {"columns": {"columns": cols, "references": refs}, "classes": ["a", "b"]}
    assert plot_columns(results, tmp_path / "c.png")
    assert len(seen) == 6 and len(set(seen)) == 6  # six columns, six colours
    assert not set(seen) & {to_hex(colour) for colour, _ in REF_STYLE.values()}
