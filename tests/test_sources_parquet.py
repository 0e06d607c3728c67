"""parquet:FILE_OR_GLOB and hf:PATH, with real generated parquet and arrow files."""

import json
import sys

import numpy as np
import pytest

import colhead
from colhead.cache import open_cache
from colhead.extract import parse_dataset

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

FAST = dict(column="tiny", precision="fp32", workers=0, progress=False, device="cpu")
CLASSES = ["cat", "dog", "eel"]


def folder_rows(image_folder):
    files = sorted(p for p in image_folder.rglob("*") if p.is_file())
    return [(p, p.read_bytes(), CLASSES.index(p.parent.name)) for p in files]


def hf_metadata(names):
    """The schema metadata datasets writes: ClassLabel names travel with the file."""
    feats = {"image": {"_type": "Image"}, "label": {"names": names, "_type": "ClassLabel"}}
    return {b"huggingface": json.dumps({"info": {"features": feats}}).encode()}


def hf_table(rows, names=CLASSES):
    image = pa.array(
        [{"bytes": b, "path": p.name} for p, b, _ in rows],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    table = pa.table({"image": image, "label": pa.array([y for *_, y in rows], pa.int64())})
    return table.replace_schema_metadata(hf_metadata(names))


def test_parquet_like_hf_exports_reads_row_groups_and_class_names(image_folder, tmp_path):
    pq.write_table(hf_table(folder_rows(image_folder)), tmp_path / "d.parquet", row_group_size=5)
    ds = parse_dataset(f"parquet:{tmp_path}/*.parquet")
    assert len(ds) == 12 and ds.classes == CLASSES and ds.labels[0] == "cat"
    assert ds.ids[6] == "d.parquet/6" and ds.store.index[6].tolist() == [0, 1, 1]
    assert ds.read(11) == (image_folder / "eel" / "eel3.png").read_bytes()
    assert parse_dataset(ds.spec).ids == ds.ids
    with pytest.raises(ValueError, match="has no splits"):
        parse_dataset(f"parquet:{tmp_path}/d.parquet", split="train")


def test_parquet_and_folder_give_identical_vectors(image_folder, tmp_path):
    rows = folder_rows(image_folder)
    pq.write_table(hf_table(rows), tmp_path / "d.parquet", row_group_size=4)
    a = colhead.extract(data=f"folder:{image_folder}", out=tmp_path / "f.h5", **FAST)
    b = colhead.extract(data=f"parquet:{tmp_path}/d.parquet", out=tmp_path / "p.h5", **FAST)
    fa, fb = open_cache(a.path), open_cache(b.path)
    assert fa.features.shape == fb.features.shape == (12, 32)
    np.testing.assert_array_equal(fa.features, fb.features)  # same order: sorted paths
    assert [fa.classes[i] for i in fa.labels] == [fb.classes[i] for i in fb.labels]


def test_broken_and_missing_images_in_parquet_are_skipped_with_reasons(image_folder, tmp_path):
    rows = folder_rows(image_folder)[:3]
    binary = [rows[0][1], rows[1][1][:200], None, rows[2][1]]  # 1: a truncated PNG
    table = pa.table({"img": pa.array(binary, pa.binary()), "label": ["a", "b", "a", None]})
    pq.write_table(table, tmp_path / "x.parquet")
    (tmp_path / "y.parquet").write_bytes(b"PAR1 but not really a parquet file")
    out = tmp_path / "c.h5"
    r = colhead.extract(data=f"parquet:{tmp_path}/{{x,y}}.parquet", out=out, **FAST)
    reasons = dict(open_cache(out).skipped)
    assert r.written == 1 and r.skipped_now == 4
    assert "decode" in reasons["x.parquet/1"]
    assert "image is empty" in reasons["x.parquet/2"]
    assert "no label in column 'label'" in reasons["x.parquet/3"]
    assert "not a readable parquet file" in reasons["y.parquet/#damaged"]


def test_image_column_must_be_named_when_ambiguous(tmp_path):
    table = pa.table({"a": pa.array([b"x"], pa.binary()), "b": pa.array([b"y"], pa.binary())})
    pq.write_table(table, tmp_path / "two.parquet")
    with pytest.raises(ValueError, match=r"Found several \(a, b\); --image-col NAME"):
        parse_dataset(f"parquet:{tmp_path}/two.parquet")
    ds = parse_dataset(f"parquet:{tmp_path}/two.parquet", image_col="b")
    assert ds.read(0) == b"y" and ds.spec.endswith("?image_col=b")


def test_hub_snapshot_layout_has_splits_from_file_names(image_folder, tmp_path):
    rows = folder_rows(image_folder)
    (tmp_path / "data").mkdir()
    pq.write_table(hf_table(rows[:8]), tmp_path / "data" / "train-00000-of-00001.parquet")
    pq.write_table(hf_table(rows[8:]), tmp_path / "data" / "test-00000-of-00001.parquet")
    assert len(parse_dataset(f"hf:{tmp_path}", split="train")) == 8
    with pytest.raises(ValueError, match="has splits test, train; choose one"):
        parse_dataset(f"hf:{tmp_path}")


def test_hf_save_to_disk_folder(image_folder, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = folder_rows(image_folder)
    feats = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=CLASSES)}
    )

    def part(rs):
        data = {
            "image": [{"bytes": b, "path": None} for _, b, _ in rs],
            "label": [y for *_, y in rs],
        }
        return datasets.Dataset.from_dict(data, features=feats)

    datasets.DatasetDict({"train": part(rows[::2]), "test": part(rows[1::2])}).save_to_disk(
        tmp_path / "saved"
    )
    ds = parse_dataset(f"hf:{tmp_path / 'saved'}", split="test")
    assert len(ds) == 6 and ds.classes == CLASSES and ds.labels[:2] == ["cat", "cat"]
    assert ds.read(0) == rows[1][1] and ds.spec.endswith("?split=test")
    with pytest.raises(ValueError, match="no split 'val'; its splits are train, test"):
        parse_dataset(f"hf:{tmp_path / 'saved'}", split="val")
    part(rows).to_parquet(tmp_path / "export.parquet")  # datasets' own parquet export
    ex = parse_dataset(f"parquet:{tmp_path / 'export.parquet'}")
    assert ex.classes == CLASSES and ex.read(3) == rows[3][1]


def test_without_pyarrow_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'colhead\[parquet\]'"):
        parse_dataset(f"parquet:{tmp_path}/x.parquet")


def test_a_parquet_dataset_pickles_without_its_loaded_row_group(image_folder, tmp_path):
    import pickle

    pq.write_table(hf_table(folder_rows(image_folder)), tmp_path / "d.parquet")
    ds = parse_dataset(f"parquet:{tmp_path / 'd.parquet'}")
    first = ds.read(0)  # loads a row group into this process
    blob = pickle.dumps(ds)
    assert len(blob) < 4096 and pickle.loads(blob).read(0) == first


def test_the_cli_says_what_to_install_without_a_traceback(monkeypatch, tmp_path, capsys):
    from colhead.cli import main

    monkeypatch.setitem(sys.modules, "pyarrow", None)
    argv = ["extract", "--column", "tiny", "--data", f"parquet:{tmp_path}/x.parquet"]
    assert main(argv + ["--out", str(tmp_path / "c.h5")]) == 1
    assert "error: Reading parquet: and hf: data needs pyarrow" in capsys.readouterr().err
