"""Stage features (``efficientnet_lite0:stages``) against the final vector, at 1/5/10/all labels.

Issue 15's measurement: pooling every stage of the network (Head2Toe, Evci et al. 2022,
https://arxiv.org/abs/2201.03529) next to the final vector, on a 2,000-image Fashion-MNIST folder
(1,500 train / 500 test, 10 classes; the same folder and split as bench/fewshot.py). Each column
is extracted ONCE into a cache (an existing one is reused), then every head of ``--heads`` (with
the comparison protocol's settings, ``heads.make_protocol_head``) is fitted on ``n`` labelled
images per class from the training split, ``--repeats`` seeds per shot count, and scored on the
whole test split. Rows per head:

- ``final``: the plain column's 1,280-d vectors (its own cache);
- ``stages``: the 2,064-d ``:stages`` vectors, all groups concatenated;
- ``stages, per-group CL2N``: the same vectors, each group centred on the labelled images' mean
  and scaled to unit length (then / sqrt(8)), so that every group weighs the same;
- ``stages, picked on val``: Head2Toe's selection, made cheap: groups (the 7 stages and the final
  vector) are added greedily, starting from the final vector, while the accuracy on held-out
  labelled images rises (stratified k-fold, k <= 5, over the labelled images only; a 20% hold-out
  from 50 per class; the head with a fixed C=1 while selecting). With one label per class there is
  nothing to hold out, and all groups are kept. The test split is never seen while selecting.

    apt-get install -y dataset-fashion-mnist
    python bench/fewshot.py --make-folder /tmp/fm2k   # 2,000 PNGs in class folders
    python bench/stages.py                            # extracts /tmp/fm.h5, /tmp/fm_stages.h5

It prints mean top-1 accuracy (%) ± standard deviation over the seeds, one table per head, and
the groups picked at the first seed. Measured here (2 shared cores, bf16 torch caches; logreg took
48 min, ncm 30 s), at 1 / 5 / 10 / all labels per class:

    logreg  final 52.3 / 69.7 / 76.6 / 85.0   stages 49.3 / 70.8 / 77.1 / 86.6
            per-group CL2N 43.9 / 69.2 / 75.9 / 85.8   picked on val 49.3 / 71.3 / 77.3 / 85.6
    ncm     final 51.7 / 70.9 / 76.5 / 78.8   stages 49.0 / 68.9 / 74.6 / 78.6
            per-group CL2N 43.4 / 61.9 / 66.1 / 74.4   picked on val 49.0 / 70.5 / 77.2 / 79.8
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("COLHEAD_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))
from fewshot import few_shot, make_folder  # noqa: E402  (the same folder and shots)

BASE = "efficientnet_lite0"


def cache_for(column: str, folder: Path, out: Path, precision: str):
    """The column's cache of ``folder`` at ``out``: reused when it is complete and matches."""
    from colhead.cache import open_cache
    from colhead.extract import extract

    if out.exists():
        c = open_cache(out)
        if c.identity.get("column") == column and c.identity.get("dataset") == f"folder:{folder}":
            print(f"reusing {out} ({len(c)} x {c.dim}, {c.identity.get('precision')})")
            return c
        raise SystemExit(f"{out} holds {c.identity.get('column')} of {c.identity.get('dataset')}")
    t0 = time.perf_counter()
    extract(column, f"folder:{folder}", out=out, precision=precision, backend="torch")
    print(f"extracted {column} into {out} in {time.perf_counter() - t0:.0f} s")
    return open_cache(out)


def stage_groups(column: str) -> list[tuple[str, int]]:
    """(name, width) of each group of the ``:stages`` vector, the final vector last."""
    import torch

    from colhead.extract import Embedder

    e = Embedder(column, backend="torch", precision="fp32")
    crop = e.spec.preprocess.crop
    with torch.inference_mode():
        final, maps = e.model.taps(torch.zeros(1, 3, crop, crop))
    names = [*e.model.stage_names, "final"]
    return list(zip(names, [m.shape[1] for m in maps] + [final.shape[1]]))


def held_out_score(make, X, y, seed: int) -> float:
    """Mean accuracy on held-out labelled rows (stratified k-fold, or one 20% hold-out)."""
    from sklearn.model_selection import StratifiedKFold, train_test_split

    per_class = int(np.bincount(y).min())
    if per_class >= 50:
        tr, va = train_test_split(np.arange(len(y)), test_size=0.2, stratify=y, random_state=seed)
        splits = [(tr, va)]
    else:
        folds = StratifiedKFold(min(5, per_class), shuffle=True, random_state=seed)
        splits = list(folds.split(X, y))
    return float(
        np.mean([np.mean(make().fit(X[a], y[a]).predict(X[b]) == y[b]) for a, b in splits])
    )


def pick_groups(make, X, y, slices: list[slice], seed: int) -> list[int]:
    """Greedy forward selection of groups from the final vector (the last one) on held-out rows."""
    if int(np.bincount(y).min()) < 2:
        return list(range(len(slices)))  # one label per class: nothing to hold out

    def cols(groups):
        return np.concatenate([np.arange(len(X[0]))[slices[g]] for g in sorted(groups)])

    chosen = [len(slices) - 1]
    best = held_out_score(make, X[:, cols(chosen)], y, seed)
    while len(chosen) < len(slices):
        scores = {
            g: held_out_score(make, X[:, cols(chosen + [g])], y, seed)
            for g in range(len(slices))
            if g not in chosen
        }
        g = max(scores, key=scores.get)
        if scores[g] <= best:
            break
        chosen, best = chosen + [g], scores[g]
    return sorted(chosen)


def group_cl2n(X, slices: list[slice], like=None):
    """Each group centred (on the labelled rows' mean) and scaled to unit length, then / sqrt(G).

    Under CL2N of the whole vector the groups with the largest spread dominate (here blocks.5
    and blocks.6, twice the final vector's); this gives every group the same weight.
    """
    ref = X if like is None else like
    out = np.empty_like(X)
    for s in slices:
        g = X[:, s] - ref[:, s].mean(0)
        out[:, s] = g / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return out / np.sqrt(len(slices))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--folder", type=Path, default=Path("/tmp/fm2k"))
    p.add_argument("--plain", type=Path, default=Path("/tmp/fm.h5"))
    p.add_argument("--stages", type=Path, default=Path("/tmp/fm_stages.h5"))
    p.add_argument("--precision", default="bf16", help="of a new extraction (torch backend)")
    p.add_argument("--shots", default="1,5,10,all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--heads", default="logreg,ncm")
    p.add_argument("--no-select", action="store_true", help="skip the Head2Toe selection rows")
    args = p.parse_args(argv)

    from sklearn.model_selection import train_test_split

    from colhead.heads import HEADS, describe_head, make_head, make_protocol_head

    if not args.folder.is_dir():
        make_folder(args.folder)
    plain = cache_for(BASE, args.folder, args.plain, args.precision)
    stages = cache_for(f"{BASE}:stages", args.folder, args.stages, args.precision)
    groups = stage_groups(f"{BASE}:stages")
    ends = np.cumsum([w for _, w in groups])
    slices = [slice(e - w, e) for (_, w), e in zip(groups, ends)]
    assert ends[-1] == stages.dim, (groups, stages.dim)

    # the same images in the same order in both caches (ids), labels from the plain one
    order = {i: r for r, i in enumerate(stages.ids)}
    rows = np.array([order[i] for i in plain.ids])
    y = np.asarray(plain.labels)
    assert np.array_equal(np.asarray(stages.labels)[rows], y)
    feats = {
        "final": np.asarray(plain.features, np.float32),
        "stages": np.asarray(stages.features, np.float32)[rows],
    }
    a, b = feats["final"], feats["stages"][:, slices[-1]]
    cos = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    print(
        f"{len(y)} images, {len(np.unique(y))} classes; groups "
        + ", ".join(f"{n} {w}" for n, w in groups)
        + f" = {stages.dim} dims; final slice vs plain cache: cosine min {cos.min():.4f}"
    )
    i_tr, i_te = train_test_split(
        np.arange(len(y)), test_size=args.test_size, stratify=y, random_state=0
    )
    y_tr, y_te = y[i_tr], y[i_te]
    shots = [s if s == "all" else int(s) for s in args.shots.split(",")]
    rows_of = ["final", "stages", "stages, per-group CL2N"]
    rows_of += [] if args.no_select else ["stages, picked on val"]
    print(f"{len(i_tr)} train / {len(i_te)} test; {args.repeats} seeds; top-1 % ± sd over seeds")

    for head in args.heads.split(","):
        if head not in HEADS:
            raise SystemExit(f"unknown head {head!r}; available: {', '.join(HEADS)}")
        # the scorer while selecting: the head with a fixed C (no C sweep inside every candidate)
        fixed = {"C": 1.0, "normalize": "cl2n"} if head == "logreg" else {}
        table, picked, settings, t0 = {}, {}, {}, time.perf_counter()
        for row in rows_of:
            X = feats["final" if row == "final" else "stages"]
            X_tr, X_te = X[i_tr], X[i_te]
            for n in shots:
                accs = []
                for seed in range(1 if n == "all" else args.repeats):
                    idx = few_shot(y_tr, n, seed)
                    Xl, yl = X_tr[idx], y_tr[idx]
                    cols = slice(None)
                    if row.startswith("stages, picked"):
                        chosen = pick_groups(
                            lambda h=head, f=fixed: make_head(h, **f), Xl, yl, slices, seed
                        )
                        cols = np.concatenate([np.arange(X.shape[1])[slices[g]] for g in chosen])
                        if seed == 0:
                            picked[n] = [groups[g][0] for g in chosen]
                    per_class = int(np.bincount(yl).min())
                    Xf, Xq = Xl[:, cols], X_te[:, cols]
                    if row.endswith("per-group CL2N"):
                        Xf, Xq = group_cl2n(Xl, slices), group_cl2n(X_te, slices, like=Xl)
                    model = make_protocol_head(head, per_class, seed=seed).fit(Xf, yl)
                    accs.append(100 * float(np.mean(model.predict(Xq) == y_te)))
                    if seed == 0:
                        settings[row, n] = describe_head(model)
                table[row, n] = accs
            print(f"  {head}, {row}: {time.perf_counter() - t0:.0f} s", flush=True)
        print(f"\n{head} ({time.perf_counter() - t0:.0f} s)")
        print("| features | " + " | ".join(f"{n} / class" for n in shots) + " |")
        print("|---|" + "---:|" * len(shots))
        for row in rows_of:
            cells = [
                f"{statistics.mean(table[row, n]):.1f} ± {statistics.pstdev(table[row, n]):.1f}"
                for n in shots
            ]
            print(f"| {row} | " + " | ".join(cells) + " |")
        for n, names in picked.items():
            print(f"  picked at {n} / class (seed 0): {', '.join(names)}")
        keys = ("C_", "selection_", "normalize")
        shown = {f"{r} {n}": {k: d[k] for k in keys if k in d} for (r, n), d in settings.items()}
        if head == "logreg":
            print(
                "  C chosen (seed 0): " + "; ".join(f"{k}: {v.get('C_')}" for k, v in shown.items())
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
