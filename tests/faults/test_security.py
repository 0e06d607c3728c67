"""Nothing colhead reads from a cache or a head file can run code, and metadata is bounded.

Caches hold plain numbers, byte strings and UTF-8 strings only (every dataset and attribute
is scanned); head files load with ``allow_pickle=False``; ``torch.load`` runs with
``weights_only=True`` wherever colhead calls it; JSON attributes are size-limited and parsed
defensively. Each attack below would create a marker file if it ran code.
"""

from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from colhead.cache import CacheError, open_cache, verify_cache
from colhead.heads import load_head

from ._procs import FIGURES

REPO = Path(__file__).resolve().parents[2]


class _Exploit:
    """Unpickling this creates a marker file: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plain_dtype(dt: np.dtype) -> bool:
    if h5py.check_string_dtype(dt) is not None:
        return True  # HDF5 strings (fixed bytes or variable-length UTF-8): never unpickled
    return dt.kind in "biuf" and dt.fields is None


def _scan(path: Path) -> list[str]:
    """Every dataset and attribute of a cache whose type is not plain numbers or strings."""
    bad = []
    with h5py.File(path, "r", locking=False) as f:

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and not _plain_dtype(obj.dtype):
                bad.append(f"/{name}: {obj.dtype}")
            for k, v in obj.attrs.items():
                if not isinstance(v, (str, bytes, int, float, np.integer, np.floating)):
                    bad.append(f"/{name} attribute {k}: {type(v).__name__}")

        visit("", f)
        f.visititems(visit)
    return bad


def test_caches_hold_no_objects_or_pickles(digits_ref, base_cache_for_scan):
    n = 0
    for path in (digits_ref[0], base_cache_for_scan):
        assert _scan(path) == [], path
        with h5py.File(path, "r", locking=False) as f:
            f.visititems(lambda name, obj: None)
            n += len(f) + len(f["skipped"])
    FIGURES["cache datasets scanned for object/pickle types"] += n


@pytest.fixture(scope="module")
def base_cache_for_scan(zygote, tmp_path_factory):
    """A cache with classes and skipped items (its string tables are not empty)."""
    from conftest import broken_files, photo, write_image

    from ._procs import extract_argv

    root = tmp_path_factory.mktemp("scan") / "imgs"
    for c, name in enumerate(["a", "b"]):
        for i in range(3):
            write_image(root / name / f"{i}.png", photo(i, size=(20, 20), cls=c))
    broken_files(root / "a")
    out = root.parent / "c.h5"
    r = zygote.run(extract_argv(out, f"folder:{root}"))
    assert r.rc == 0, r.describe()
    return out


def _evil_cache(src: Path, dst: Path, marker: Path, where: str) -> Path:
    """A copy of a good cache with a pickle of _Exploit planted somewhere colhead reads."""
    shutil.copy(src, dst)
    blob = np.void(pickle.dumps(_Exploit(marker)))
    with h5py.File(dst, "r+", locking=False) as f:
        if where == "metadata attribute":
            f.attrs["metadata"] = blob
        elif where == "identity attribute":
            f.attrs["identity"] = blob
        else:  # the ids dataset, replaced by opaque bytes holding the pickle
            n = f["ids"].shape[0]
            del f["ids"]
            f.create_dataset("ids", data=np.array([blob] * n))
    return dst


@pytest.mark.parametrize("where", ["metadata attribute", "identity attribute", "ids dataset"])
def test_a_pickle_planted_in_a_cache_never_runs(digits_ref, zygote, tmp_path, where):
    ref_path, _, _ = digits_ref
    marker = tmp_path / "pwned"
    evil = _evil_cache(ref_path, tmp_path / "evil.h5", marker, where)
    with pytest.raises(CacheError):
        open_cache(evil)
    assert verify_cache(evil) != []
    for argv in (["cache", "info", str(evil)], ["cache", "verify", str(evil)]):
        r = zygote.run(argv)
        r.assert_no_crash()
        assert r.rc == 1, r.describe()
    assert not marker.exists()
    FIGURES["malicious caches refused (no code ran)"] += 1


def test_a_head_whose_metadata_entry_is_a_pickle_never_runs(tmp_path):
    """tests/test_heads.py plants pickles in a weights entry and as the whole file; here the
    entry every load reads first, ``__meta__``, is the pickled object array."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.array([_Exploit(marker)], dtype=object))
    with pytest.raises(ValueError, match="pickled objects are refused"):
        load_head(path)
    assert not marker.exists()
    FIGURES["malicious head files refused (no code ran)"] += 1


def test_predict_refuses_a_pickled_head_without_running_it(zygote, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.npz"
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.array([_Exploit(marker)], dtype=object))
    img = tmp_path / "x.png"
    from conftest import photo

    photo(1).save(img)
    r = zygote.run(["predict", "--head-file", str(path), str(img)])
    r.assert_no_crash()
    assert r.rc == 1 and "pickled objects are refused" in r.err, r.describe()
    assert not marker.exists()
    FIGURES["malicious head files refused (no code ran)"] += 1


def _sources():
    skip = {".venv", "tests", "bench", "build", "dist", ".git"}
    for p in sorted(REPO.rglob("*.py")):
        if not skip & set(p.relative_to(REPO).parts):
            yield p


def _dotted(node) -> str:
    """``a.b.c`` for a call of a plain dotted name, "" for ``f().b`` and the like."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return ""
    parts.append(node.id)
    return ".".join(reversed(parts))


def test_no_loader_in_the_source_tree_can_unpickle():
    """torch.load only with weights_only=True, np.load only with allow_pickle=False, and no
    pickle, marshal, shelve, eval or exec at all."""
    problems, calls = [], 0
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            kw = {k.arg: k.value for k in node.keywords}
            where = f"{path.relative_to(REPO)}:{node.lineno} {name}"
            if name in ("torch.load",):
                calls += 1
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value
                if not ok:
                    problems.append(f"{where} without weights_only=True")
            elif name in ("np.load", "numpy.load"):
                calls += 1
                ok = isinstance(kw.get("allow_pickle"), ast.Constant)
                if not ok or kw["allow_pickle"].value is not False:
                    problems.append(f"{where} without allow_pickle=False")
            elif name.split(".")[0] in ("pickle", "marshal", "shelve", "dill", "cloudpickle"):
                problems.append(where)
            elif name in ("eval", "exec", "joblib.load"):
                problems.append(where)
    assert problems == []
    assert calls >= 2  # the scan sees the known loaders (columns' weights, heads)
    FIGURES["loader calls checked in the source tree"] += calls


def _with_attr(src: Path, dst: Path, name: str, value) -> Path:
    shutil.copy(src, dst)
    with h5py.File(dst, "r+", locking=False) as f:
        f.attrs[name] = value
    return dst


BAD_ATTRS = {
    "10 MB of JSON": ("metadata", json.dumps({"x": "y" * 10_000_000}), "larger than"),
    "not JSON": ("metadata", "{this is not json", "not valid JSON"),
    "a JSON list": ("metadata", "[1, 2, 3]", "not a JSON object"),
    "nested 30000 deep": ("metadata", "[" * 30000 + "]" * 30000, "not valid JSON"),
    "a number": ("identity", 42, "not a JSON string"),
    "invalid UTF-8": ("identity", np.void(b"\xff\xfe{}"), "not a JSON string"),
}


@pytest.mark.parametrize("case", sorted(BAD_ATTRS))
def test_metadata_attributes_are_bounded_and_parsed_defensively(digits_ref, zygote, tmp_path, case):
    ref_path, _, _ = digits_ref
    name, value, words = BAD_ATTRS[case]
    bad = _with_attr(ref_path, tmp_path / "c.h5", name, value)
    with pytest.raises(CacheError, match=words):
        open_cache(bad)
    problems = verify_cache(bad)
    assert len(problems) == 1 and words in problems[0]
    for argv in (["cache", "info", str(bad)], ["cache", "verify", str(bad)]):
        r = zygote.run(argv)
        r.assert_no_crash()
        assert r.rc == 1 and words in (r.err + r.out), r.describe()
    FIGURES["bad metadata attributes refused"] += 1
