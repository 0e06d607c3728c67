"""Column + saved head on new images: ``colhead predict`` and the service's ``/v1/predict``.

A head only makes sense on the vectors it was trained on, so a head file records the column key
(column, weights sha256, preprocessing) of its training cache, and the predictor refuses to pair
it with any other column.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class HeadColumnMismatch(ValueError):
    """A head was trained on another column's vectors than the one it would be applied to."""


def load_image(image):
    """A path becomes its guarded bytes; bytes and arrays pass through. Raises BadImage."""
    from ..extract import BadImage, read_image_file

    if isinstance(image, (str, os.PathLike)):
        try:  # the data set reader's own guards: FIFO, device, huge file
            return read_image_file(image)
        except OSError as e:
            raise BadImage(f"cannot read: {e.strerror or e}") from None
    return image


class Predictor:
    """A saved head and the column it needs, loaded once.

    Args:
        head_path: a head file written by ``colhead heads --save`` / ``compare``.
        column: the column to use; must be the head's (default: the head's own).
        embedder: an already loaded Embedder to share (the service passes its own).
        device, precision, backend: for the column when it is loaded here.
        load_column: False skips loading the column (for vectors from a cache); ``predict``
            then needs ``embedder``.

    Raises:
        HeadColumnMismatch: the head's column key differs from the column's.
        ValueError: the file is not a head file, or does not record its column.
    """

    def __init__(
        self,
        head_path: str | os.PathLike,
        *,
        column: str | None = None,
        embedder=None,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        load_column: bool = True,
    ):
        from ..heads import load_head

        self.path = Path(head_path)
        check_head_file(self.path)
        self.head, self.meta = load_head(self.path)
        want = self.meta.get("column")
        if not want or not self.meta.get("column_key"):
            raise ValueError(f"{self.path} does not record the column it was trained on.")
        self.column = want
        asked = column or (embedder.spec.name if embedder is not None else want)
        if asked != want:
            raise HeadColumnMismatch(
                f"The head {self.path.name} was trained on vectors of column {want!r}, not "
                f"{asked!r}; a head only works on its own column's vectors. Use --column {want}."
            )
        if embedder is None and load_column:
            from ..extract import Embedder

            embedder = Embedder(want, device=device, precision=precision, backend=backend)
        self.embedder = embedder
        if embedder is not None and embedder.column_key != self.meta["column_key"]:
            raise HeadColumnMismatch(
                f"The head {self.path.name} was trained on column {want!r} with weights sha256 "
                f"{str(self.meta.get('weights_sha256'))[:12]}… and preprocessing "
                f"{self.meta.get('preprocess')}, but the loaded column has weights "
                f"{embedder.weights_sha256[:12]}… and {embedder.identity['preprocess']}."
            )
        names = self.meta.get("class_names") or []
        self.labels = [
            names[int(c)]
            if isinstance(c, (int, np.integer)) and 0 <= int(c) < len(names)
            else str(c)
            for c in self.head.classes_
        ]

    def check_cache(self, cache) -> None:
        """Raise HeadColumnMismatch unless ``cache`` (a FeatureCache) holds this head's vectors."""
        if cache.column_key != self.meta["column_key"]:
            raise HeadColumnMismatch(
                f"The cache {cache.path} holds vectors of column "
                f"{cache.identity.get('column')!r} (column key {cache.column_key[:12]}…), but the "
                f"head {self.path.name} was trained on {self.column!r} (column key "
                f"{self.meta['column_key'][:12]}…); use a cache of the head's column."
            )

    def predict(self, images, *, top: int = 5, batch_size: int = 64) -> list[dict]:
        """Label and probabilities per image; a bad image gets ``error`` instead.

        Args:
            images: paths (read with the data set reader's guards), bytes or arrays.
            top: how many labels to rank per image.
            batch_size: images per forward pass.
        """
        return [
            answer for _, answer in self.predict_items(list(images), top=top, batch_size=batch_size)
        ]

    def predict_items(self, items, *, top: int = 5, batch_size: int = 64) -> Iterator[tuple]:
        """``(index, answer)`` for each of ``items``, in order, ``batch_size`` at a time.

        ``items`` is a sequence of images, or of zero-argument callables that return one (a
        data set's ``read``), so that only one batch is in memory at once. Every failure of one
        image (unreadable, undecodable, out of memory while decoding) is that image's
        ``{"error": reason}``; the others still get their answers.
        """
        if self.embedder is None:
            raise ValueError("This Predictor was made with load_column=False; it has no column.")
        for s in range(0, len(items), batch_size):
            chunk = items[s : s + batch_size]
            answers: list[dict] = [{} for _ in chunk]
            arrays, ok = [], []
            for k, item in enumerate(chunk):
                try:
                    arrays.append(self.embedder.preprocess(load_image(_call(item))))
                    ok.append(k)
                except Exception as e:  # noqa: BLE001 - per image: see the docstring
                    answers[k] = {"error": failure_reason(e)}
            if ok:
                feats = self.embedder.forward(np.stack(arrays))
                for k, answer in zip(ok, self.predict_features(feats, top=top)):
                    answers[k] = answer
            yield from enumerate(answers, start=s)

    def predict_features(self, features: np.ndarray, *, top: int = 5) -> list[dict]:
        """Label, probability and top-k labels for vectors of this head's column."""
        if len(features) == 0:
            return []
        proba = self.head.predict_proba(features)
        out = []
        for row in proba:
            order = np.argsort(-row)[:top]
            out.append(
                {
                    "label": self.labels[order[0]],
                    "probability": float(row[order[0]]),
                    "top": [{"label": self.labels[j], "probability": float(row[j])} for j in order],
                }
            )
        return out


_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_ZIP_MAGIC = b"PK\x03\x04"


def check_head_file(path: Path) -> None:
    """Say what a file is when it is not a head file (an .npz is a zip archive)."""
    try:
        with open(path, "rb") as f:
            magic = f.read(8)
    except OSError:
        return  # load_head says why it cannot be read
    if magic.startswith(_HDF5_MAGIC):
        raise ValueError(
            f"{path} is a feature cache (HDF5), not a head file. Train and save a head on it "
            "with `colhead heads --train CACHE --test CACHE --save DIR`, then pass the saved "
            ".npz file with --head-file."
        )
    if magic and not magic.startswith(_ZIP_MAGIC):
        raise ValueError(
            f"{path} is not a colhead head file: a head file is the .npz (zip) archive that "
            "`colhead heads --save DIR` or `colhead compare` writes."
        )


def _call(item):
    return item() if callable(item) else item


def failure_reason(e: Exception) -> str:
    """The recorded reason for one failed image: BadImage's own words, else the error's."""
    from ..extract import BadImage

    if isinstance(e, BadImage):
        return str(e)
    if isinstance(e, OSError):
        return f"cannot read: {e.strerror or e}"
    if isinstance(e, MemoryError):
        return "out of memory while decoding this image"
    return f"cannot decode: {type(e).__name__}: {str(e)[:200]}"
