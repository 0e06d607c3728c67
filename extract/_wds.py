"""``wds:PATTERN``: webdataset tar shards, read in place (never unpacked to disk).

A sample is the files of one shard sharing a key (the member path up to the first dot of its
base name, as webdataset splits it): one image (``jpg|jpeg|png|webp``) and an optional label in
``.cls`` (class name or index), ``.json`` (a number, a string, or ``{"label": ...}``) or
``.txt``. Patterns use braces as webdataset does: ``train-{000..099}.tar``, ``{a,b}.tar``.

Plain ``tarfile`` is enough and needs no dependency: one pass over each shard reads only the
headers (tarfile seeks over the data of an uncompressed tar), keeping each image's offset and
size; ``read(i)`` is then one ``pread``. That gives the extractor the random access it schedules
and resumes by. Ids are ``shard/key`` (the shard relative to the pattern's folder), so they are
stable across runs and a resumed run finds its rows.

Bad samples are items that fail to read, with the reason recorded in the cache's skipped table:
a sample without an image, an image member over the size limit, a member cut short by the end of
the file, and the unreadable rest of a malformed shard (``shard/#damaged@OFFSET``).
"""

from __future__ import annotations

import errno
import glob
import json
import os
import posixpath
import re
import stat
import tarfile
from pathlib import Path

import numpy as np

from ._source import Dataset, refuse_split, safe_id

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # in order of preference when a sample has several
LABEL_EXTS = ("cls", "json", "txt")
MAX_MEMBER_BYTES = 64 << 20  # an image member; tar shards hold images of a few MB at most
MAX_LABEL_BYTES = 64 << 10
_BRACE = re.compile(r"\{([^{}]*)\}")
_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def expand_braces(pattern: str) -> list[str]:
    """``a-{000..002}.tar`` -> a-000.tar, a-001.tar, a-002.tar; ``{x,y}`` -> x, y (nestable)."""
    m = _BRACE.search(pattern)
    if m is None:
        return [pattern]
    body, head, tail = m.group(1), pattern[: m.start()], pattern[m.end() :]
    r = _RANGE.match(body)
    if r:
        lo, hi = int(r.group(1)), int(r.group(2))
        width = len(r.group(1)) if r.group(1).startswith("0") else 0
        if hi < lo or hi - lo > 1_000_000:
            raise ValueError(f"Brace range {{{body}}} in {pattern!r} is empty or too long.")
        parts = [str(n).zfill(width) for n in range(lo, hi + 1)]
    else:
        parts = body.split(",")
    return [x for p in parts for x in expand_braces(head + p + tail)]


class TarStore:
    """Images inside tar shards: (shard, offset, size) per item, read with one pread each."""

    def __init__(self, shards: list[str], index: np.ndarray, reasons: dict[int, str]):
        self.shards, self.index, self.reasons = shards, index, reasons
        self.mtimes = [_mtime(s) for s in shards]

    def read(self, i: int) -> bytes:
        if i in self.reasons:
            raise OSError(errno.ENOENT, self.reasons[i])
        shard, offset, size = (int(v) for v in self.index[i])
        if size > MAX_MEMBER_BYTES:
            raise OSError(errno.EFBIG, f"{size} bytes, over the {MAX_MEMBER_BYTES} member limit")
        fd = os.open(self.shards[shard], os.O_RDONLY | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "shard is not a regular file")
            data = os.pread(fd, size, offset)
        finally:
            os.close(fd)
        if len(data) != size:
            raise OSError(errno.EIO, f"shard ends {size - len(data)} bytes into this image")
        return data

    def stat(self, i: int) -> tuple[int, int]:
        shard, _, size = (int(v) for v in self.index[i])
        return (size, self.mtimes[shard])


def _mtime(path: str) -> int:
    try:
        return int(os.stat(path).st_mtime_ns)
    except OSError:
        return -1


def _split_key(name: str) -> tuple[str, str]:
    """webdataset's rule: the key is the path up to the first dot of the base name."""
    d, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(d, stem), ext.lower()


def _label_of(raw: bytes, ext: str) -> str | None:
    text = raw.decode("utf-8", "replace").strip()
    if ext == "json":
        try:
            v = json.loads(text)
        except ValueError:
            return None
        if isinstance(v, dict):
            v = next((v[k] for k in ("label", "cls", "class") if k in v), None)
        return None if v is None or isinstance(v, (dict, list)) else str(v)
    return text or None


def _scan(shard: str, sid: str):
    """One pass over a shard's headers: [(id, image (offset, size) or None, label, reason)]."""
    fd = os.open(shard, os.O_RDONLY | os.O_NONBLOCK)
    f = open(fd, "rb")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return [(f"{sid}/#damaged@0", None, None, "shard is not a regular file")]
        samples: dict[str, dict[str, tuple[int, int]]] = {}
        damaged = None
        try:
            # "r:" is uncompressed only: a compressed shard cannot be seeked, so it is refused
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if not m.isfile():
                        continue
                    key, ext = _split_key(m.name)
                    if posixpath.basename(key).startswith(".") or not ext:
                        continue
                    samples.setdefault(key, {}).setdefault(ext, (m.offset_data, m.size))
                end = tf.offset
        except tarfile.TarError as e:
            return [(f"{sid}/#damaged@0", None, None, f"not a readable (uncompressed) tar: {e}")]
        # tarfile stops without a word at a damaged header after the first; what follows the
        # last good member must be the zero blocks that end a tar, or the rest is lost.
        f.seek(end)
        rest = f.read(1 << 20)
        if rest.strip(b"\0"):
            damaged = f"malformed tar after byte {end}: the rest of the shard cannot be read"
        out = []
        for key, files in samples.items():
            label = reason = None
            for ext in LABEL_EXTS:
                if ext in files:
                    off, size = files[ext]
                    if size <= MAX_LABEL_BYTES and off + size <= st.st_size:
                        f.seek(off)
                        label = _label_of(f.read(size), ext)
                    break
            img = next((files[e] for e in IMAGE_EXTS if e in files), None)
            if img is None:
                found = ", ".join(sorted(files))
                reason = f"sample has no image ({', '.join(IMAGE_EXTS)}); it has: {found}"
            elif img[0] + img[1] > st.st_size:
                reason = "image member is cut short by the end of the shard"
            out.append((f"{sid}/{safe_id(key)}", img, label, reason))
        if damaged:
            out.append((f"{sid}/#damaged@{end}", None, None, damaged))
        return out
    finally:
        f.close()


def webdataset(arg: str, split: str | None) -> Dataset:
    """``wds:PATTERN``: the samples of every shard the (brace) pattern names, in order."""
    if not arg:
        raise ValueError("wds: needs a shard pattern, e.g. wds:/data/train-{000..099}.tar.")
    pattern = str(Path(arg).expanduser().absolute())
    refuse_split(f"wds:{pattern}", split, "the pattern chooses the shards")
    shards = []
    for p in expand_braces(pattern):
        shards += sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    missing = [s for s in shards if not os.path.isfile(s)]
    if missing or not shards:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(shards)} shards of wds:{arg} do not exist (e.g. "
            f"{missing[0] if missing else pattern}). Check the pattern: braces as in "
            "train-{000..099}.tar."
        )
    base = os.path.dirname(pattern.split("{", 1)[0].split("*", 1)[0])
    ids, labels, index, reasons = [], [], [], {}
    for k, shard in enumerate(shards):
        for id_, img, label, reason in _scan(shard, safe_id(os.path.relpath(shard, base))):
            if reason:
                reasons[len(ids)] = reason
            ids.append(id_)
            labels.append(label)
            index.append((k, *(img or (0, 0))))
    if not ids:
        raise ValueError(f"The shards of wds:{arg} hold no samples.")
    named = {lab for lab in labels if lab is not None}
    classes = sorted(named, key=lambda c: (0, int(c), "") if c.isdigit() else (1, 0, c))
    if classes:
        # An item that cannot become a row (a damaged shard, a sample without an image or label)
        # still needs a label for the cache's class table: it gets the first class, never used.
        for i, lab in enumerate(labels):
            if lab is None and i not in reasons:
                reasons[i] = "sample has no label (.cls, .json or .txt) in a labelled data set"
            if lab is None:
                labels[i] = classes[0]
    store = TarStore(shards, np.array(index, dtype=np.int64).reshape(-1, 3), reasons)
    info = {"source": "webdataset tar shards", "shards": len(shards)}
    return Dataset(
        f"wds:{pattern}", ids, labels if classes else None, classes, store=store, info=info
    )
