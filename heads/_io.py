"""Save and load fitted heads as one ``.npz`` file, without pickle.

A head file holds the head's learned arrays plus a ``__meta__`` entry: UTF-8 JSON bytes stored
as a uint8 array, with the head kind, its constructor parameters, the classes and the caller's
``meta`` (colhead puts the cache fingerprint and column key there). Loading uses
``np.load(allow_pickle=False)`` and builds the head from JSON values only, so a head file from
elsewhere cannot run code; anything unexpected is a ``ValueError`` that says what is wrong.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ._registry import HEAD_KINDS, kind_of

FORMAT = "colhead.head"
FORMAT_VERSION = 1
MAX_META_BYTES = 1 << 20  # Parameters, classes and caller metadata are small; refuse giant JSON.
_META = "__meta__"
# Class label dtypes that JSON round-trips exactly: bool, ints, floats, str, and object
# arrays of those (labels read from pandas). Anything else (structured, void) is refused.
_CLASSES_DTYPE = re.compile(r"^[<>|=]?[biufUO]\d*$")


def _json_default(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"a value of type {type(value).__name__} is not JSON serialisable")


def save_head(head, path: str | os.PathLike, *, meta: dict) -> Path:
    """Write a fitted head to one ``.npz`` file (no pickle), replacing ``path`` atomically.

    Args:
        head: A fitted head of a registered kind (``heads.HEAD_KINDS``).
        path: Destination file; written exactly there (no extension is appended).
        meta: JSON-serialisable dict stored alongside, e.g. the cache fingerprint and the
            column key the head was trained on.

    Returns:
        The path written.
    """
    try:
        kind = kind_of(head)
    except ValueError:
        names = ", ".join(k.cls.__name__ for k in HEAD_KINDS.values())
        raise ValueError(f"save_head can store {names}; got {type(head).__name__}.") from None
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict; got {type(meta).__name__}.")
    check_is_fitted(head)
    classes = np.asarray(head.classes_)
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "kind": kind,
        "params": head.get_params(deep=False),
        "classes": classes.tolist(),
        "classes_dtype": classes.dtype.str,
        "n_features_in": int(head.n_features_in_),
        "meta": meta,
    }
    if hasattr(head, "feature_names_in_"):
        header["feature_names_in"] = head.feature_names_in_.tolist()
    try:
        blob = json.dumps(header, default=_json_default).encode("utf-8")
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"save_head stores parameters and meta as JSON, and {err}; use plain numbers, "
            "strings, lists and dicts (an integer random_state, not a RandomState)."
        ) from err
    if len(blob) > MAX_META_BYTES:
        raise ValueError(
            f"The head's metadata is {len(blob)} bytes as JSON, over the {MAX_META_BYTES}-byte "
            "limit; keep large lists out of meta."
        )
    arrays = head._export_state()
    for name, array in arrays.items():
        # np.savez would silently pickle an object array.
        if array.dtype.kind not in "biuf":
            raise ValueError(
                f"Head array {name!r} has dtype {array.dtype}; only numbers are saved."
            )

    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        # A file object, not a name: np.savez would append ".npz" to a name without it.
        with open(tmp, "wb") as f:
            np.savez(f, **{_META: np.frombuffer(blob, dtype=np.uint8)}, **arrays)
            # The bytes reach the disk before the rename publishes them: after a crash the
            # name holds the old head or the new one, never a torn file (issue 13).
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)  # and the rename itself survives a crash
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open a folder; its rename is durable as it returns
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (e.g. network mounts) refuse fsync on a folder
        pass
    finally:
        os.close(fd)


# A malformed file is a bad value whatever its Python type, so these checks raise ValueError
# (TRY004 would want TypeError).


def _entry(archive, name: str, path: Path) -> np.ndarray:
    """One array of the archive; numpy refuses object (pickled) arrays as allow_pickle=False."""
    try:
        array = archive[name]
    except ValueError as err:
        raise ValueError(
            f"{path} entry {name!r} is corrupt or not a plain numeric array (pickled objects are "
            f"refused): {err}"
        ) from err
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{path} is a corrupt head file; entry {name!r}: {err}") from err
    # NpzFile hands back raw bytes for a member that is not a .npy array.
    if not isinstance(array, np.ndarray):
        message = f"{path} entry {name!r} is corrupt: it is not a .npy array."
        raise ValueError(message)  # noqa: TRY004
    return array


def _read_header(archive, path: Path) -> dict:
    if _META not in archive.files:
        raise ValueError(f"{path} is not a colhead head file: it has no {_META} entry.")
    size = archive.zip.getinfo(f"{_META}.npy").file_size
    if size > MAX_META_BYTES + 1024:  # + room for the .npy header
        raise ValueError(
            f"{path} has a {size}-byte {_META} entry, over the {MAX_META_BYTES}-byte limit."
        )
    raw = _entry(archive, _META, path)
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise ValueError(
            f"{path} is not a colhead head file: {_META} must be a 1-D uint8 array of JSON "
            f"bytes, not {raw.dtype} with shape {raw.shape}."
        )
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as err:
        raise ValueError(
            f"{path} has a corrupt {_META} entry that is not valid JSON: {err}"
        ) from err
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a {_META} entry that is not a JSON object.")  # noqa: TRY004
    if header.get("format") != FORMAT or header.get("version") != FORMAT_VERSION:
        raise ValueError(
            f"{path} is not a {FORMAT} file of version {FORMAT_VERSION}; it says format "
            f"{header.get('format')!r}, version {header.get('version')!r}."
        )
    kind = header.get("kind")
    if kind not in HEAD_KINDS:
        raise ValueError(
            f"Unknown head kind {kind!r} in {path}; known kinds: {', '.join(sorted(HEAD_KINDS))}."
        )
    expected = {"params": dict, "classes": list, "classes_dtype": str, "meta": dict}
    for key, key_type in {**expected, "n_features_in": int}.items():
        if not isinstance(header.get(key), key_type):
            message = f"{path} has a {_META} entry whose {key!r} is missing or malformed."
            raise ValueError(message)  # noqa: TRY004
    if isinstance(header["n_features_in"], bool) or header["n_features_in"] < 1:
        raise ValueError(f"{path} has a {_META} entry with a malformed 'n_features_in'.")
    return header


def _build(header: dict, state: dict[str, np.ndarray], path: Path):
    """A head from the parsed header and arrays: constructor params, then learned state."""
    kind, params = header["kind"], header["params"]
    cls = HEAD_KINDS[kind].cls
    unknown = set(params) - set(cls().get_params(deep=False))
    if unknown:
        raise ValueError(f"{path} gives {cls.__name__} unknown parameters {sorted(unknown)}.")
    dtype = header["classes_dtype"]
    if not _CLASSES_DTYPE.match(dtype):
        raise ValueError(f"{path} stores classes with unsupported dtype {dtype!r}.")
    labels = header["classes"]
    if not labels or not all(isinstance(c, (str, int, float)) for c in labels):
        raise ValueError(f"{path} stores classes that are not a non-empty list of labels.")
    classes = np.array(labels, dtype=np.dtype(dtype))
    if classes.tolist() != labels:  # e.g. strings longer than a "<U2" dtype would be cut
        raise ValueError(f"{path} stores classes that do not fit their dtype {dtype!r}.")

    head = cls(**params)
    head.classes_ = classes
    head.n_features_in_ = header["n_features_in"]
    if "feature_names_in" in header:
        names = header["feature_names_in"]
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ValueError(f"{path} stores feature names that are not a list of strings.")
        head.feature_names_in_ = np.array(names, dtype=object)
    try:
        head._import_state(state)
        # One prediction catches arrays whose shapes disagree with each other or the classes.
        proba = head.predict_proba(np.zeros((1, head.n_features_in_), dtype=np.float32))
        if proba.shape != (1, len(classes)):
            raise ValueError(f"it predicts {proba.shape[1]} classes, not {len(classes)}")
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as err:
        raise ValueError(f"{path} holds an inconsistent {kind} head: {err}") from err
    return head


def load_head(path: str | os.PathLike) -> tuple[object, dict]:
    """Read a head written by :func:`save_head`, never unpickling anything.

    Args:
        path: A file written by ``save_head``.

    Returns:
        ``(head, meta)``: the fitted head, predicting exactly as the saved one did on the same
        device, and the ``meta`` dict given to ``save_head``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No head file at {path}.")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} is not a colhead head file (.npz): {err}") from err
    if not isinstance(archive, np.lib.npyio.NpzFile):
        message = f"{path} is a single .npy array, not a colhead head file (.npz)."
        raise ValueError(message)  # noqa: TRY004
    with archive:
        header = _read_header(archive, path)
        state = {name: _entry(archive, name, path) for name in archive.files if name != _META}
    for name, array in state.items():
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{path} entry {name!r} has dtype {array.dtype}; expected numbers.")
    return _build(header, state, path), header["meta"]
