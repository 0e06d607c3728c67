import gzip
import os

import numpy as np
import pytest

from colhead.extract import parse_dataset
from conftest import photo, write_image


def test_folder_with_class_subfolders(image_folder):
    ds = parse_dataset(f"folder:{image_folder}")
    assert ds.classes == ["cat", "dog", "eel"]
    assert len(ds) == 12 and ds.ids == sorted(ds.ids)
    assert ds.ids[0] == "cat/cat0.jpg" and ds.labels[0] == "cat"
    assert ds.spec == f"folder:{image_folder.resolve()}"


def test_flat_folder_has_no_labels(tmp_path):
    for i in range(3):
        write_image(tmp_path / f"{i}.png", photo(i))
    (tmp_path / "README.txt").write_text("not an image, ignored")
    ds = parse_dataset(f"folder:{tmp_path}")
    assert ds.labels is None and ds.ids == ["0.png", "1.png", "2.png"]


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="No folder at"):
        parse_dataset(f"folder:{tmp_path / 'nope'}")


def test_non_utf8_file_names_get_printable_ids(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")  # latin-1 bytes, invalid UTF-8
    write_image(tmp_path / name, photo(0))
    ds = parse_dataset(f"folder:{tmp_path}")
    assert ds.ids == ["caf\\xe9.png"]
    assert ds.read(0)[:4] == b"\x89PNG"


def test_symlink_loops_do_not_hang(tmp_path):
    write_image(tmp_path / "a" / "x.png", photo(0))
    os.symlink(tmp_path, tmp_path / "a" / "loop")
    os.symlink(tmp_path / "self.jpg", tmp_path / "a" / "self.jpg")  # dangling link to itself
    ds = parse_dataset(f"folder:{tmp_path}")
    assert "a/x.png" in ds.ids


def test_csv_resolves_relative_paths_against_its_folder(image_folder):
    csv = image_folder / "list.csv"
    csv.write_text("path,label\ncat/cat0.jpg,feline\ndog/dog1.png,canine\n")
    ds = parse_dataset(f"csv:{csv}")
    assert ds.ids == ["cat/cat0.jpg", "dog/dog1.png"]
    assert ds.classes == ["canine", "feline"] and ds.labels == ["feline", "canine"]
    assert ds.paths[0] == image_folder / "cat" / "cat0.jpg"


def test_csv_may_not_escape_its_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    csv = tmp_path / "sub" / "list.csv"
    csv.write_text("path,label\n../secret.jpg,x\n")
    with pytest.raises(ValueError, match="outside the CSV's folder"):
        parse_dataset(f"csv:{csv}")
    csv.write_text(f"path,label\n{tmp_path / 'a.jpg'},x\n")
    with pytest.raises(ValueError, match="outside the CSV's folder"):
        parse_dataset(f"csv:{csv}")
    assert len(parse_dataset(f"csv:{csv}", allow_absolute=True)) == 1


def test_csv_without_path_column_or_with_missing_label(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("file,label\na.jpg,x\n")
    with pytest.raises(ValueError, match="'path' column"):
        parse_dataset(f"csv:{csv}")
    csv.write_text("path,label\na.jpg,\n")
    with pytest.raises(ValueError, match="missing label"):
        parse_dataset(f"csv:{csv}")


def test_digits_splits_are_disjoint_and_stable():
    tr, te = parse_dataset("digits", split="train"), parse_dataset("digits", split="test")
    assert not set(tr.ids) & set(te.ids) and len(tr) + len(te) == 1797
    assert parse_dataset("digits", split="train").ids == tr.ids
    assert tr.ids[0].startswith("digits:train:") and tr.arrays.dtype == np.uint8


@pytest.mark.parametrize("task,n", [("defect", 4), ("binary", 2), ("type", 2)])
def test_elpv_tasks(task, n):
    pytest.importorskip("elpv_dataset")
    ds = parse_dataset(f"elpv:{task}", split="test")
    assert len(ds.classes) == n and 600 < len(ds) < 700
    assert ds.paths[0].is_file() and ds.ids[0].startswith("images/cell")


def test_flowers102_in_torchvision_layout(tmp_path):
    from scipy.io import savemat

    base = tmp_path / "flowers-102"
    for i in range(1, 7):
        write_image(base / "jpg" / f"image_{i:05d}.jpg", photo(i))
    savemat(base / "imagelabels.mat", {"labels": np.array([[1, 1, 2, 2, 102, 102]])})
    savemat(base / "setid.mat", {"trnid": [[1, 3]], "valid": [[2, 4]], "tstid": [[5, 6]]})
    tr = parse_dataset(f"flowers102:{tmp_path}", split="train")
    assert tr.ids == ["jpg/image_00001.jpg", "jpg/image_00003.jpg"]
    assert tr.labels == ["000", "001"]  # 1-based on disk, 0-based here
    assert parse_dataset(f"flowers102:{tmp_path}", split="test").labels == ["101", "101"]


def test_fashion_mnist_reads_debian_idx_files(tmp_path, monkeypatch):
    from colhead.extract import _sources_builtin

    imgs = np.arange(3 * 28 * 28, dtype=np.uint8).reshape(3, 28, 28)
    head = bytes([0, 0, 8, 3]) + b"".join(int(d).to_bytes(4, "big") for d in imgs.shape)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(head + imgs.tobytes())
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (3).to_bytes(4, "big") + bytes([9, 0, 3]))
    monkeypatch.setattr(_sources_builtin, "DEBIAN_FASHION", tmp_path)
    ds = parse_dataset("fashion-mnist", split="test")
    assert ds.labels == ["Ankle boot", "T-shirt/top", "Dress"]
    assert (ds.arrays == imgs).all()


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="Unknown dataset 'digit'.*'digits'"):
        parse_dataset("digit")
    with pytest.raises(ValueError, match="no split 'val'"):
        parse_dataset("digits", split="val")


# -- issue 11: split folders, CSV columns ------------------------------------------------------
@pytest.fixture
def split_folder(tmp_path):
    """root/{train,validation,test}/{cat,dog}/*.png, the Hugging Face imagefolder layout."""
    root = tmp_path / "splits"
    for s, n in (("train", 3), ("validation", 2), ("test", 1)):
        for c, name in enumerate(["cat", "dog"]):
            for i in range(n):
                write_image(root / s / name / f"{name}{i}.png", photo(i, cls=c))
    return root


def test_split_folder_selects_one_split(split_folder):
    ds = parse_dataset(f"folder:{split_folder}", split="train")
    assert ds.classes == ["cat", "dog"] and len(ds) == 6
    assert ds.ids[0] == "train/cat/cat0.png" and ds.labels[0] == "cat"
    assert ds.spec == f"folder:{split_folder.resolve()}?split=train"
    val = parse_dataset(f"folder:{split_folder}", split="val")  # val finds validation/
    assert len(val) == 4 and val.spec.endswith("?split=validation")
    assert len(parse_dataset(f"folder:{split_folder}", split="all")) == 12
    # the normalised spec parses back to the same items (a cache's spec is enough)
    assert parse_dataset(val.spec).ids == val.ids


def test_split_folder_errors_name_the_splits(split_folder, tmp_path):
    with pytest.raises(ValueError, match="has splits test, train, validation; choose one"):
        parse_dataset(f"folder:{split_folder}")
    with pytest.raises(ValueError, match="no split 'dev'; its splits are test, train, validation"):
        parse_dataset(f"folder:{split_folder}", split="dev")
    write_image(tmp_path / "flat" / "cat" / "a.png", photo(0))
    with pytest.raises(ValueError, match="has no splits .* --split 'train' cannot apply"):
        parse_dataset(f"folder:{tmp_path / 'flat'}", split="train")


def test_split_folders_beside_other_folders_or_images_are_an_error(split_folder):
    write_image(split_folder / "extra" / "x.png", photo(0))
    with pytest.raises(ValueError, match="split folders .* also folders extra"):
        parse_dataset(f"folder:{split_folder}", split="train")


def test_top_level_images_beside_class_folders_are_an_error(image_folder):
    write_image(image_folder / "stray.png", photo(0))
    with pytest.raises(ValueError, match="1 image.* top level beside class folders.*stray.png"):
        parse_dataset(f"folder:{image_folder}")


def test_symlinked_class_folder_out_of_the_tree_is_not_followed(tmp_path):
    """issue 13: a class folder linking elsewhere pulled a foreign tree into the data set."""
    root, outside = tmp_path / "data", tmp_path / "elsewhere"
    write_image(root / "cat" / "a.png", photo(0))
    write_image(outside / "secret.png", photo(1))
    os.symlink(outside, root / "dog")
    os.symlink(root / "cat", root / "kitty")  # inside the tree: followed
    ds = parse_dataset(f"folder:{root}")
    assert ds.ids == ["cat/a.png", "kitty/a.png"] and ds.info["ignored_links"] == ["dog"]


def test_csv_named_columns_and_split_column(image_folder):
    csv = image_folder / "meta.csv"
    csv.write_text("file,kind,fold\ncat/cat0.jpg,feline,train\ndog/dog1.png,canine,test\n")
    ds = parse_dataset(
        f"csv:{csv}", path_col="file", label_col="kind", split_col="fold", split="train"
    )
    assert ds.ids == ["cat/cat0.jpg"] and ds.labels == ["feline"]
    assert ds.spec == f"csv:{csv}?path_col=file&label_col=kind&split_col=fold&split=train"
    assert parse_dataset(ds.spec).ids == ds.ids
    with pytest.raises(ValueError, match="no split 'val'; its splits are test, train"):
        parse_dataset(f"csv:{csv}", path_col="file", split_col="fold", split="val")
    with pytest.raises(ValueError, match="has no 'label' column.*--label-col"):
        parse_dataset(f"csv:{csv}", path_col="file", label_col="label")
    with pytest.raises(ValueError, match="has no splits"):
        parse_dataset(f"csv:{csv}", path_col="file", split="train")
    with pytest.raises(ValueError, match="--label-col does not apply to folder data"):
        parse_dataset(f"folder:{image_folder}", label_col="kind")


def test_csv_unquoted_comma_is_a_line_numbered_error(image_folder):
    """issue 13: an unquoted comma in a label gave an AttributeError traceback."""
    csv = image_folder / "l.csv"
    csv.write_text('path,label\ncat/cat0.jpg,"big, fluffy"\n\ndog/dog1.png,big, wet\n')
    with pytest.raises(ValueError, match=r"l.csv, line 4: 3 fields where the header has 2.*quotes"):
        parse_dataset(f"csv:{csv}")


def test_cli_extract_takes_csv_column_options(image_folder, tmp_path, capsys):
    from colhead.cache import open_cache
    from colhead.cli import main

    csv = image_folder / "meta.csv"
    csv.write_text("file,kind\ncat/cat0.jpg,feline\ndog/dog1.png,canine\n")
    out = tmp_path / "c.h5"
    argv = ["extract", "--column", "tiny", "--data", f"csv:{csv}", "--path-col", "file"]
    argv += ["--label-col", "kind", "--out", str(out), "--precision", "fp32", "--workers", "0"]
    assert main(argv + ["--device", "cpu", "--no-progress"]) == 0
    c = open_cache(out)
    assert list(c.ids) == ["cat/cat0.jpg", "dog/dog1.png"]
    assert set(c.classes) == {"canine", "feline"}


def test_guarded_reader_refuses_pipes_devices_and_huge_files(tmp_path):
    """The public reader predict shares with the data sets (issue 13)."""
    import errno

    from colhead.extract import read_image_file

    os.mkfifo(tmp_path / "fifo.jpg")
    for path in (tmp_path / "fifo.jpg", "/dev/zero"):
        with pytest.raises(OSError, match="not a regular file") as e:
            read_image_file(path)  # a FIFO without a writer must not block
        assert e.value.errno == errno.EINVAL
    (tmp_path / "big.png").write_bytes(b"x" * 1000)
    with pytest.raises(OSError, match="1000 bytes, more than") as e:
        read_image_file(tmp_path / "big.png", max_bytes=999)
    assert read_image_file(tmp_path / "big.png") == b"x" * 1000


def test_dataset_splits_names_what_a_spec_offers(split_folder, image_folder):
    from colhead.extract import dataset_splits

    assert dataset_splits(f"folder:{split_folder}") == ["test", "train", "validation"]
    assert dataset_splits(f"folder:{image_folder}") == []
    assert dataset_splits("digits") == ["train", "test"]
    csv = image_folder / "meta.csv"
    csv.write_text("path,fold\ncat/cat0.jpg,train\ndog/dog1.png,test\n")
    assert dataset_splits(f"csv:{csv}", split_col="fold") == ["test", "train"]
