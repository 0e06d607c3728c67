"""Column + saved head on new images: ``colhead predict`` and the service's ``/v1/predict``.

A head only makes sense on the vectors it was trained on, so a head file records the column key
(column, weights sha256, preprocessing) of its training cache, and the predictor refuses to pair
it with any other column.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def head_meta(cache) -> dict:
    """What a head saved from ``cache`` (a FeatureCache) must remember about its features."""
    ident = cache.identity
    return {
        "cache_fingerprint": cache.fingerprint,
        "cache_config_key": cache.config_key,
        "column_key": cache.column_key,
        "column": ident.get("column"),
        "weights_sha256": ident.get("weights_sha256"),
        "preprocess": ident.get("preprocess"),
        "precision": ident.get("precision"),
        "dataset": ident.get("dataset"),
        "class_names": list(cache.classes),
    }


class HeadColumnMismatch(ValueError):
    """A head was trained on another column's vectors than the one it would be applied to."""


class Predictor:
    """A saved head and the column it needs, loaded once.

    Args:
        head_path: a head file written by ``colhead heads --save`` / ``compare``.
        column: the column to use; must be the head's (default: the head's own).
        embedder: an already loaded Embedder to share (the service passes its own).
        device, precision: for the column when it is loaded here.

    Raises:
        HeadColumnMismatch: the head's column key differs from the column's.
    """

    def __init__(
        self,
        head_path: str | os.PathLike,
        *,
        column: str | None = None,
        embedder=None,
        device: str = "auto",
        precision: str = "auto",
    ):
        from .extract import Embedder
        from .heads import load_head

        self.path = Path(head_path)
        self.head, self.meta = load_head(self.path)
        want = self.meta.get("column")
        if not want or not self.meta.get("column_key"):
            raise ValueError(f"{self.path} does not record the column it was trained on.")
        asked = column or (embedder.spec.name if embedder is not None else want)
        if asked != want:
            raise HeadColumnMismatch(
                f"The head {self.path.name} was trained on vectors of column {want!r}, not "
                f"{asked!r}; a head only works on its own column's vectors. Use --column {want}."
            )
        self.embedder = embedder or Embedder(want, device=device, precision=precision)
        if self.embedder.column_key != self.meta["column_key"]:
            raise HeadColumnMismatch(
                f"The head {self.path.name} was trained on column {want!r} with weights sha256 "
                f"{str(self.meta.get('weights_sha256'))[:12]}… and preprocessing "
                f"{self.meta.get('preprocess')}, but the loaded column has weights "
                f"{self.embedder.weights_sha256[:12]}… and {self.embedder.identity['preprocess']}."
            )
        names = self.meta.get("class_names") or []
        self.labels = [
            names[int(c)]
            if isinstance(c, (int, np.integer)) and 0 <= int(c) < len(names)
            else str(c)
            for c in self.head.classes_
        ]

    def predict(self, images, *, top: int = 5) -> list[dict]:
        """Label and probabilities per image; a bad image gets ``error`` instead."""
        feats, errors = self.embedder.embed(list(images))
        ok = [i for i, e in enumerate(errors) if e is None]
        out: list[dict] = [{"error": e} for e in errors]
        for i, answer in zip(ok, self.predict_features(feats[ok], top=top)):
            out[i] = answer
        return out

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
