"""``colhead predict --data``: a saved head over a whole data set, to a CSV of predictions.

Two ways to the vectors: with a cache file, ``extract`` fills it (or reuses it when it already
matches: same column, data and split), so a second run costs no forward pass; without one, the
images stream through the column in batches and nothing is written but the predictions. Either
way a bad item is skipped with its reason, exactly as extraction skips it.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Iterator
from functools import partial
from pathlib import Path

from ._predictor import Predictor


def predict_dataset(
    predictor: Predictor,
    data,
    *,
    top: int = 5,
    batch_size: int = 64,
    cache: str | os.PathLike | None = None,
    extract_options: dict | None = None,
) -> Iterator[tuple[str, dict]]:
    """``(id, answer)`` per item of ``data``; ``answer`` has ``error`` for a skipped item.

    Args:
        predictor: the head; with ``cache``, it needs no column of its own (``load_column=False``).
        data: a ``Dataset`` (see ``colhead.extract.parse_dataset``).
        top: how many labels to rank.
        batch_size: images per forward pass.
        cache: a cache file to fill or reuse (``extract(..., out=cache)``); None keeps nothing.
        extract_options: more ``extract`` arguments for the cache (device, precision, backend).
    """
    if cache is None:
        items = [partial(data.read, i) for i in range(len(data))]
        for i, answer in predictor.predict_items(items, top=top, batch_size=batch_size):
            yield data.ids[i], answer
        return
    from ..cache import open_cache
    from ..extract import extract

    opts = {"batch_size": batch_size, "progress": False, **(extract_options or {})}
    extract(predictor.column, data, out=cache, **opts)
    feats = open_cache(cache)
    predictor.check_cache(feats)
    for s in range(0, len(feats), batch_size):
        rows = feats.features[s : s + batch_size]
        for id_, answer in zip(
            feats.ids[s : s + batch_size], predictor.predict_features(rows, top=top)
        ):
            yield str(id_), answer
    for id_, reason in feats.skipped:
        yield str(id_), {"error": reason}


def csv_header(top: int) -> list[str]:
    """id, label, probability, then label_K, probability_K for the ranks 2..top."""
    head = ["id", "label", "probability"]
    for k in range(2, top + 1):
        head += [f"label_{k}", f"probability_{k}"]
    return head


def write_csv(
    rows: Iterable[tuple[str, dict]], out: str | os.PathLike, *, top: int, on_error
) -> tuple[int, int]:
    """Write the answers to ``out`` (written beside it, then renamed); errors go to ``on_error``.

    Returns:
        (rows written, items that failed)
    """
    out = Path(out)
    if out.suffix.lower() != ".csv":
        raise ValueError(
            f"predict --out writes a CSV file of predictions; got {str(out)!r}. Give a path "
            "ending in .csv (vectors go to a cache: see --cache and `colhead cache export`)."
        )
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    written = failed = 0
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            header = csv_header(top)
            w.writerow(header)
            for id_, answer in rows:
                if "error" in answer:
                    failed += 1
                    on_error(id_, answer["error"])
                    continue
                row = [id_, answer["label"], f"{answer['probability']:.6f}"]
                for t in answer["top"][1:top]:
                    row += [t["label"], f"{t['probability']:.6f}"]
                row += [""] * (len(header) - len(row))  # a head with fewer classes than --top
                w.writerow(row)
                written += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return written, failed
