"""The heads a server offers: every saved head in its folder, loaded when it fits the column."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ._predictor import HeadColumnMismatch, Predictor, check_head_file

log = logging.getLogger("colhead.serve")


@dataclass
class ServedHead:
    name: str
    path: Path
    column: str | None
    predictor: Predictor | None = None  # when usable
    reason: str | None = None  # why it is not loaded

    def describe(self) -> dict:
        p = self.predictor
        return {
            "name": self.name,
            "file": self.path.name,
            "column": self.column,
            "loaded": p is not None,
            "reason": self.reason,
            "kind": type(p.head).__name__ if p is not None else None,
            "labels": list(p.labels) if p is not None else None,
        }


def load_heads(heads_dir: Path | None, embedder) -> dict[str, ServedHead]:
    """Every ``*.npz`` in ``heads_dir``: loaded when it fits the served column, else why not."""
    from ..heads import load_head

    heads: dict[str, ServedHead] = {}
    if heads_dir is None:
        return heads
    for path in sorted(heads_dir.glob("*.npz")):
        entry = ServedHead(path.stem, path, None)
        try:
            check_head_file(path)  # says what a non-head file is, not numpy's pickle advice
            entry.column = load_head(path)[1].get("column")
            entry.predictor = Predictor(path, embedder=embedder)
            log.info("head %r loaded from %s (column %s)", entry.name, path, entry.column)
        except HeadColumnMismatch as e:
            entry.reason = str(e)
            log.warning("head %r NOT loaded: %s", entry.name, e)
        except (ValueError, OSError) as e:  # load_head's messages name the file and the fault
            entry.reason = str(e)
            log.warning("head %r NOT loaded: %s", entry.name, entry.reason)
        heads[entry.name] = entry
    return heads
