"""Vectors out (issue 11): ``colhead cache export`` and ``FeatureCache.to_pandas``.

Every export must give back exactly what ``open_cache`` reads: the same ids in the same order,
labels, classes, hashes and float32 vectors bit for bit (csv: to the printed digits, which
are exact for float32).
"""

import csv
import re

import numpy as np
import pytest

from colhead.cache import CacheWriter, export_cache, open_cache
from colhead.cli import main

DIM = 5
IDENT = {
    "column": "tiny",
    "weights_sha256": "0" * 64,
    "preprocess": {},
    "precision": "fp32",
    "store_dtype": "float32",
    "dataset": "digits:all",
}
# ids a csv or a parquet string column must carry intact: a comma, a quote, unicode, a space
IDS = ["a/1.png", 'b/with,comma "q".png', "c/ünï cödé.jpg", "d/x y.png", "e/5.png", "f/6.png"]


@pytest.fixture(params=["float32", "float16"])
def cache(request, tmp_path):
    """A complete cache: 6 rows (one unlabelled, one stale), 3 classes, odd float values."""
    dt = request.param
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((len(IDS), DIM)) * 10.0 ** rng.integers(-3, 4, (len(IDS), 1))
    feats[4] = 0  # a zero vector: normalize must leave it zero, not NaN
    path = tmp_path / "c.h5"
    with CacheWriter(
        path, identity={**IDENT, "store_dtype": dt}, metadata={}, dim=DIM, store_dtype=dt
    ) as w:
        w.class_indices(["cat", "dog", "eel"])
        w.append(IDS, [f"{i:064x}" for i in range(len(IDS))], [(0, 0)] * len(IDS),
                 [0, 1, 2, -1, 1, 0], feats.astype(np.float32))  # fmt: skip
        w.retire(rows=[5])  # stale: never exported
        w.finish()
    return path


def test_npz_round_trips_open_cache_bit_for_bit(cache, tmp_path):
    out = tmp_path / "v.npz"
    assert main(["cache", "export", str(cache), "--out", str(out)]) == 0  # format from suffix
    c = open_cache(cache)
    with np.load(out, allow_pickle=False) as z:
        assert z["features"].dtype == np.float32
        assert z["features"].tobytes() == c.features.tobytes()
        assert z["ids"].tolist() == list(c.ids) == IDS[:5]
        assert z["labels"].tolist() == c.labels.tolist() == [0, 1, 2, -1, 1]
        assert z["classes"].tolist() == c.classes
        assert z["hashes"].tolist() == list(c.hashes)


def test_parquet_round_trips_in_row_groups(cache, tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "v.parquet"
    sizes = []  # rows per write: the vectors are converted one row group at a time
    write = pq.ParquetWriter.write_table
    monkeypatch.setattr(
        pq.ParquetWriter,
        "write_table",
        lambda w, t, **kw: sizes.append(len(t)) or write(w, t, **kw),
    )
    export_cache(cache, out, block_rows=2)
    assert sizes == [2, 2, 1]
    f = pq.ParquetFile(out)
    assert f.metadata.num_row_groups == 3  # 5 rows, 2 per group: never all in one piece
    t = f.read()
    assert t.column_names == ["id", "label", "class", "hash", "vector"]
    assert str(t.schema.field("vector").type) == f"fixed_size_list<element: float>[{DIM}]"
    c = open_cache(cache)
    vec = t.column("vector").combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    assert vec.tobytes() == c.features.tobytes()
    assert t.column("id").to_pylist() == list(c.ids)
    assert t.column("label").to_pylist() == c.labels.tolist()
    assert t.column("class").to_pylist() == ["cat", "dog", "eel", None, "dog"]
    assert t.column("hash").to_pylist() == list(c.hashes)
    assert b"config_key" in t.schema.metadata[b"colhead"]


def test_csv_round_trips_to_the_printed_digits(cache, tmp_path):
    out = tmp_path / "v.csv"
    assert main(["cache", "export", str(cache), "--out", str(out), "--format", "csv"]) == 0
    with open(out, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["id", "label", "class", "hash"] + [f"f{k}" for k in range(DIM)]
    c = open_cache(cache)
    got = np.array([[float(x) for x in r[4:]] for r in rows[1:]], dtype=np.float32)
    assert got.tobytes() == c.features.tobytes()  # 9 significant digits are exact for float32
    assert [r[0] for r in rows[1:]] == list(c.ids)
    assert [r[1] for r in rows[1:]] == ["0", "1", "2", "-1", "1"]
    assert [r[2] for r in rows[1:]] == ["cat", "dog", "eel", "", "dog"]


@pytest.mark.parametrize("fmt", ["npz", "parquet", "csv"])
def test_normalize_gives_unit_rows_and_leaves_zero_rows_zero(cache, tmp_path, fmt):
    if fmt == "parquet":
        pytest.importorskip("pyarrow")
    out = tmp_path / f"v.{fmt}"
    assert main(["cache", "export", str(cache), "--out", str(out), "--normalize"]) == 0
    if fmt == "npz":
        v = np.load(out)["features"]
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        v = pq.read_table(out).column("vector").combine_chunks().flatten().to_numpy()
    else:
        with open(out, newline="", encoding="utf-8") as fh:
            v = [[float(x) for x in r[4:]] for r in list(csv.reader(fh))[1:]]
    v = np.asarray(v, dtype=np.float64).reshape(-1, DIM)
    norms = np.linalg.norm(v, axis=1)
    np.testing.assert_allclose(np.delete(norms, 4), 1.0, rtol=1e-6)
    assert norms[4] == 0 and np.isfinite(v).all()


def test_bad_input_gives_clear_errors(cache, tmp_path, capsys):
    out = tmp_path / "v.npz"
    assert main(["cache", "export", str(cache), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["cache", "export", str(cache), "--out", str(out)]) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["cache", "export", str(cache), "--out", str(out), "--force"]) == 0
    assert main(["cache", "export", str(cache), "--out", str(out), "--format", "npy"]) == 1
    assert "Did you mean 'npz'?" in capsys.readouterr().err
    assert main(["cache", "export", str(cache), "--out", str(tmp_path / "v.txt")]) == 1
    assert "Cannot tell the export format" in capsys.readouterr().err
    assert main(["cache", "export", str(cache), "--out", str(cache), "--format", "npz",
                 "--force"]) == 1  # fmt: skip
    assert "is the cache itself" in capsys.readouterr().err
    assert open_cache(cache).dim == DIM  # untouched
    notcache = tmp_path / "x.h5"
    notcache.write_text("hello")
    assert main(["cache", "export", str(notcache), "--out", str(tmp_path / "y.npz")]) == 1
    assert re.search(
        r"x\.h5 (is not a colhead cache|cannot be read as HDF5)", capsys.readouterr().err
    )
    assert main(["cache", "export", str(tmp_path / "no.h5"), "--out", str(tmp_path / "z.npz")]) == 1
    assert "No cache file" in capsys.readouterr().err
    assert not (tmp_path / "y.npz").exists() and not (tmp_path / "z.npz").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_csv_is_refused_for_a_large_cache(cache, tmp_path, monkeypatch):
    from colhead.cache import _export

    monkeypatch.setattr(_export, "CSV_MAX_VALUES", 10)
    with pytest.raises(ValueError, match="too many for csv.*use --format parquet or npz"):
        export_cache(cache, tmp_path / "v.csv")
    assert not (tmp_path / "v.csv").exists()


def test_to_pandas(cache):
    pd = pytest.importorskip("pandas")
    c = open_cache(cache)
    df = c.to_pandas()
    assert list(df.columns) == ["id", "label", "class", "hash", "vector"]
    assert df["id"].tolist() == list(c.ids) and df["label"].tolist() == c.labels.tolist()
    assert df["class"].tolist()[:3] == ["cat", "dog", "eel"] and pd.isna(df["class"][3])
    assert np.stack(df["vector"].to_numpy()).tobytes() == c.features.tobytes()
    wide = c.to_pandas(vectors="wide")
    assert wide.shape == (5, 4 + DIM)
    assert wide[[f"f{k}" for k in range(DIM)]].to_numpy().tobytes() == c.features.tobytes()
    with pytest.raises(ValueError, match="'column' or 'wide'"):
        c.to_pandas(vectors="long")


def test_to_pandas_without_pandas_says_how_to_install(cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    with pytest.raises(ImportError, match="pip install pandas"):
        open_cache(cache).to_pandas()


def test_a_failed_export_leaves_neither_out_nor_a_temp_file(cache, tmp_path, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np.lib.format, "write_array", full)  # after features.npy is written
    out = tmp_path / "v.npz"
    with pytest.raises(OSError, match="No space"):
        export_cache(cache, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.h5"]


def test_an_incomplete_cache_exports_its_rows_with_a_warning(tmp_path, capsys):
    path = tmp_path / "c.h5"
    with CacheWriter(path, identity=IDENT, metadata={}, dim=DIM) as w:
        w.append(["a", "b"], ["0" * 64, "1" * 64], [(0, 0)] * 2, [-1, -1], np.eye(2, DIM))
    assert main(["cache", "export", str(path), "--out", str(tmp_path / "v.npz")]) == 0
    assert "is incomplete" in capsys.readouterr().err
    assert np.load(tmp_path / "v.npz")["ids"].tolist() == ["a", "b"]
