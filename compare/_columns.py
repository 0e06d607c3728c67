"""Which column for my data: several columns on the same splits and shots, ranked (issue 15).

``colhead compare --column A,B,...`` runs the full comparison on the first column (heads, the
scratch CNN and the opt-in rows) and the heads alone on every other column. Each column's caches
are aligned to the first column's image ids, so every column sees the same labels; the shots
protocol draws its validation split and its labelled images from the labels and the seed alone,
so every column is trained on the same images and chosen on the same validation split.

Each column's vectors are extracted on their own, never sliced out of a variant's: the last
slice of ``NAME:stages`` equals ``NAME``'s vectors bit for bit through torch, but not through
OpenVINO in bf16 (the CPU default; up to 0.05 apart on Fashion-MNIST images), so slicing would
pass off other numbers under the plain column's name.
"""

from __future__ import annotations

import numpy as np


def parse_columns(text: str) -> list[str]:
    """``"a, b,a"`` -> ``["a", "b"]``: the columns of a comparison, first one primary."""
    names = list(dict.fromkeys(c.strip() for c in str(text).split(",") if c.strip()))
    if not names:
        raise ValueError(
            f"--column names no column (got {text!r}); e.g. --column tiny,tiny:stages."
        )
    return names


def aligned_features(cache, ids: list[str], role: str) -> np.ndarray:
    """``cache``'s vectors in the order of ``ids`` (the first column's rows of one role)."""
    pos = {i: k for k, i in enumerate(cache.ids)}
    missing = [i for i in ids if i not in pos]
    if missing:
        raise ValueError(
            f"The {role} cache {cache.path} lacks {len(missing)} of the first column's images "
            f"(e.g. {missing[0]!r}); extract every column from the same data."
        )
    rows = np.fromiter((pos[i] for i in ids), dtype=np.int64, count=len(ids))
    return np.asarray(cache.features)[rows]


def best_by_shots(summary: list[dict], shots: list, among: list[str]) -> list[dict]:
    """Per shot count, the method of ``among`` with the best validation score, and its test."""
    from ..heads import select_best

    return [select_best(summary, str(n), among=among) | {"shots": str(n)} for n in shots]


def other_column(
    name: str,
    specs: dict,
    arr: dict,
    roles: list[str],
    *,
    heads: list[str],
    extract_all,
    run,
    log,
) -> dict:
    """Extract (or reuse) ``name``'s caches, fit the heads on them, return its ranking entry.

    ``arr`` is the first column's ``{role: (y, X, ids, ds)}``; ``extract_all(specs, column=)``
    and ``run(features, heads)`` are the pipeline's own extraction and shots protocol.
    """
    parts, caches, cost = extract_all(specs, column=name)
    c0 = next(iter(caches.values()))
    feats = []
    for role in roles:
        cache = caches["all"] if "all" in caches else caches[role]
        feats.append(aligned_features(cache, arr[role][2], role))
    log(f"column {name}: {feats[0].shape[1]} dims, heads {', '.join(heads)}")
    res = run(tuple(feats), heads)
    return {
        "column": name,
        "dim": int(feats[0].shape[1]),
        "pretrained": _pretrained(c0),
        "summary": res["summary"],
        "extraction": cost,
        "caches": [str(c.path) for c in caches.values()],
        "precision": c0.identity.get("precision"),
    }


def rank_columns(
    columns: list[str], results: dict, *, specs, arr, roles, heads, protocol, extract_all, log
) -> dict:
    """Every column after the first on the first one's splits and shots; the ranking.

    ``protocol`` holds ``run_comparison``'s keyword arguments (labels, shots, repeats, seed,
    validation labels), the same as the first column's run.
    """
    from ..heads import head_methods, run_comparison

    methods = head_methods(heads, seed=protocol["seed"])

    def run(feats, _heads):
        return run_comparison(methods, {"features": feats}, log=log, **protocol)

    first = {
        "column": columns[0],
        "dim": int(arr[roles[0]][1].shape[1]),
        "pretrained": results.get("pretrained"),
        "summary": [s for s in results["summary"] if s["method"] in heads],
        "extraction": results.get("extraction"),
        "caches": results.get("caches"),
        "precision": (results.get("provenance") or {}).get("precision"),
    }
    entries = [first] + [
        other_column(
            name, specs, arr, roles, heads=heads, extract_all=extract_all, run=run, log=log
        )
        for name in columns[1:]
    ]
    refs = {
        m: results["summary"]
        for m in dict.fromkeys(s["method"] for s in results["summary"])
        if m not in heads
    }
    return ranking(entries, protocol["shots"], heads, refs)


def _pretrained(cache) -> bool:
    from ._data import is_pretrained

    return is_pretrained(cache.metadata.get("column", {}))


def ranking(entries: list[dict], shots: list, heads: list[str], references: dict) -> dict:
    """The ``columns`` entry of results.json: every column's best head per shot count.

    Columns are ordered by their mean validation score over the shot counts (test scores are
    reported, never used to order or choose). ``references`` holds the rows that do not ride on
    a frozen column (scratch, scratch-column, finetune), as ``{name: summary rows}``.
    """
    cols = []
    for e in entries:
        by = best_by_shots(e["summary"], shots, heads)
        cols.append({k: v for k, v in e.items() if k != "summary"} | {"by_shots": by})
    cols.sort(key=lambda c: -float(np.mean([b["validation"] for b in c["by_shots"]])))
    refs = {}
    for method, summary in references.items():
        have = {s["shots"] for s in summary if s["method"] == method}
        refs[method] = [best_by_shots(summary, [n], [method])[0] for n in shots if str(n) in have]
    best = [max(cols, key=lambda c: c["by_shots"][i]["validation"]) for i in range(len(shots))]
    return {
        "selected_on": "validation",
        "columns": cols,
        "references": refs,
        "best_column_by_shots": [
            {"shots": str(n), "column": b["column"], **b["by_shots"][i]}
            for i, (n, b) in enumerate(zip(shots, best))
        ],
    }
