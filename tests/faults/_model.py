"""A model extraction for the property tests: drives ``CacheWriter`` as the extractor does.

Item ``i`` of ``n`` has the id ``item00i``, the class ``"abc"[i % 3]`` and the vector
``vector(i)``, unless it is bad: then it is skipped with the reason ``"bad item i"``. A run
opens the cache, works out what is pending from what the cache already holds (as the extractor
plans), and commits batches of pending items in order: skipped items, then rows. It may stop
early: ``close`` (close without finishing), or ``crash`` (``os._exit`` just before the k-th
commit, after that commit's data was written: the two-phase commit's worst moment).
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np

DIM = 8
IDENTITY = {
    "column": "model",
    "weights_sha256": "0" * 64,
    "preprocess": {},
    "precision": "fp32",
    "store_dtype": "float32",
    "dataset": "model:items",
}
CLASSES = "abc"


def vector(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def item_id(i: int) -> str:
    return f"item{i:03d}"


def run(
    path, bad: list[bool], batch: int, stop_after: int | None, crash_at=None, on_stop=None
) -> int:
    """One run over the model dataset; returns how many batches it committed.

    ``on_stop`` is called when the run stops early, while the writer still has the file open.
    """
    from colhead.cache import CacheWriter

    if crash_at is not None:
        real = CacheWriter._write_commit
        calls = [0]

        def dying(self):
            calls[0] += 1
            if calls[0] >= crash_at:
                os._exit(9)  # the batch's data is written, its commit is not
            real(self)

        CacheWriter._write_commit = dying
    n = len(bad)
    w = CacheWriter(path, identity=IDENTITY, metadata={"run": {"model": True}}, dim=DIM)
    try:
        labels = w.class_indices([CLASSES[i % 3] for i in range(n)])
        done = set(w.existing.rows) | set(w.existing.skipped)
        pending = [i for i in range(n) if item_id(i) not in done]
        if pending:
            w.mark_incomplete()
        batches = 0
        for start in range(0, len(pending), batch):
            if stop_after is not None and batches >= stop_after:
                if on_stop is not None:
                    on_stop()
                return batches
            chunk = pending[start : start + batch]
            skip = [i for i in chunk if bad[i]]
            rows = [i for i in chunk if not bad[i]]
            if skip:
                ids = [item_id(i) for i in skip]
                w.skip(
                    ids,
                    ["0" * 64] * len(skip),
                    [(0, 0)] * len(skip),
                    [f"bad item {i}" for i in skip],
                )
            if rows:
                w.append(
                    [item_id(i) for i in rows],
                    [f"{i:064x}" for i in rows],
                    [(i, i) for i in rows],
                    labels[rows],
                    np.stack([vector(i) for i in rows]),
                )
            batches += 1
        w.finish()
        return batches
    finally:
        w.close()


def expected(bad: list[bool]):
    """(ids, vectors, class names, skipped) that an uninterrupted run leaves."""
    good = [i for i, b in enumerate(bad) if not b]
    return (
        [item_id(i) for i in good],
        np.stack([vector(i) for i in good]) if good else np.zeros((0, DIM), np.float32),
        [CLASSES[i % 3] for i in good],
        sorted((item_id(i), f"bad item {i}") for i, b in enumerate(bad) if b),
    )


if __name__ == "__main__":  # used by the crash variant, in a child process
    args = json.loads(sys.argv[1])
    run(args["path"], args["bad"], args["batch"], None, crash_at=args["crash_at"])
