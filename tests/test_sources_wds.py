"""wds:PATTERN: webdataset tar shards read in place, with real generated shards."""

import io
import tarfile

import numpy as np
import pytest

import colhead
from colhead.cache import open_cache
from colhead.extract import parse_dataset
from colhead.extract._wds import expand_braces

FAST = dict(column="tiny", precision="fp32", workers=0, progress=False, device="cpu")


def write_shard(path, members: dict[str, bytes]):
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def shards(image_folder, tmp_path):
    """The image_folder's 12 images as 2 shards: KEY.jpg|png + KEY.cls holding the class."""
    files = sorted(p for p in image_folder.rglob("*") if p.is_file())
    out = tmp_path / "shards"
    out.mkdir()
    for k in range(2):
        members = {}
        for p in files[k * 6 : (k + 1) * 6]:
            key = f"{p.parent.name}/{p.stem}"
            members[f"{key}{p.suffix}"] = p.read_bytes()
            members[f"{key}.cls"] = p.parent.name.encode()
        write_shard(out / f"train-{k:03d}.tar", members)
    return out


def test_brace_patterns_expand_like_webdataset():
    assert expand_braces("a-{000..002}.tar") == ["a-000.tar", "a-001.tar", "a-002.tar"]
    assert expand_braces("{x,y}-{8..10}") == ["x-8", "x-9", "x-10", "y-8", "y-9", "y-10"]
    assert expand_braces("plain.tar") == ["plain.tar"]


def test_shards_become_samples_with_stable_ids_and_labels(shards, image_folder):
    ds = parse_dataset(f"wds:{shards}/train-{{000..001}}.tar")
    assert len(ds) == 12 and ds.classes == ["cat", "dog", "eel"]
    assert ds.ids[0] == "train-000.tar/cat/cat0" and ds.labels[0] == "cat"
    assert ds.read(0) == (image_folder / "cat" / "cat0.jpg").read_bytes()
    assert ds.read(11) == (image_folder / "eel" / "eel3.png").read_bytes()
    assert parse_dataset(ds.spec).ids == ds.ids  # the normalised spec parses back
    with pytest.raises(ValueError, match="has no splits .* drop --split"):
        parse_dataset(f"wds:{shards}/train-000.tar", split="train")
    with pytest.raises(FileNotFoundError, match="1 of the 3 shards"):
        parse_dataset(f"wds:{shards}/train-{{000..002}}.tar")


def test_webdataset_and_folder_give_identical_vectors(shards, image_folder, tmp_path):
    a = colhead.extract(data=f"folder:{image_folder}", out=tmp_path / "f.h5", **FAST)
    b = colhead.extract(data=f"wds:{shards}/train-{{000..001}}.tar", out=tmp_path / "w.h5", **FAST)
    assert a.written == b.written == 12
    fa, fb = open_cache(a.path), open_cache(b.path)
    by_id = {i: v for i, v in zip(fa.ids, fa.features)}
    for id_, v in zip(fb.ids, fb.features):
        shard, key = id_.split("/", 1)
        ext = ".jpg" if int(key[-1]) % 2 == 0 else ".png"  # as the image_folder fixture writes
        np.testing.assert_array_equal(v, by_id[key + ext])
    assert [fb.classes[i] for i in fb.labels] == [fa.classes[i] for i in fa.labels]
    again = colhead.extract(data=f"wds:{shards}/train-{{000..001}}.tar", out=b.path, **FAST)
    assert (again.written, again.reused) == (0, 12)  # stable ids: resume finds every row


def test_bad_samples_and_malformed_shards_are_skipped_with_reasons(shards, tmp_path):
    good = (shards / "train-000.tar").read_bytes()
    # a sample whose image is missing (only its label), and an oversized one
    write_shard(
        shards / "train-002.tar",
        {"lost.cls": b"cat", "ok.jpg": _member(good, "cat/cat0.jpg"), "ok.cls": b"cat"},
    )
    # a shard whose second header is garbage: tarfile would stop there without a word
    with tarfile.open(fileobj=io.BytesIO(good)) as tf:
        cut = tf.getmembers()[2].offset  # after cat0's image and label
    (shards / "train-003.tar").write_bytes(good[:cut] + b"\xff" * 4096 + good[cut + 4096 :])
    (shards / "train-004.tar").write_bytes(b"this is not a tar file at all" * 40)
    out = tmp_path / "bad.h5"
    r = colhead.extract(data=f"wds:{shards}/train-{{002..004}}.tar", out=out, **FAST)
    reasons = dict(open_cache(out).skipped)
    assert "sample has no image" in reasons["train-002.tar/lost"]
    assert "malformed tar after byte" in reasons[f"train-003.tar/#damaged@{cut}"]
    assert "not a readable (uncompressed) tar" in reasons["train-004.tar/#damaged@0"]
    assert r.skipped_now == 3 and r.written == 2  # ok.jpg, and cat0 before the damage


def test_member_size_limit(shards, monkeypatch):
    from colhead.extract import _wds

    ds = parse_dataset(f"wds:{shards}/train-000.tar")
    monkeypatch.setattr(_wds, "MAX_MEMBER_BYTES", 100)
    with pytest.raises(OSError, match="over the 100 member limit"):
        ds.read(0)


def _member(tar_bytes: bytes, name: str) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes)) as tf:
        return tf.extractfile(name).read()


def test_a_shard_dataset_pickles_small_for_workers_and_ray(shards):
    import pickle

    ds = parse_dataset(f"wds:{shards}/train-{{000..001}}.tar")
    blob = pickle.dumps(ds)
    assert len(blob) < 4096 and pickle.loads(blob).read(5) == ds.read(5)
