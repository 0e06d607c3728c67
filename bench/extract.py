"""Extraction speed side by side: the usual way against colhead's extractor, same column, images.

(a) the usual way: PIL full decode, torchvision Resize(256, bicubic) + CenterCrop(224) + ToTensor +
    Normalize, a DataLoader with batch 32 and 2 workers, fp32 forward of the same timm model;
(b) ``colhead.extract(...)`` with default settings into a fresh cache (auto precision: bf16 +
    channels_last on a CPU with native bf16), vectors read back with ``open_cache``.

Both are timed end to end (model build included) and interleaved, a b a b ..., on two image sets:
generated 2000x1500 photo-like JPEGs and real 300x300 elpv PNGs. The fast path's vectors are
checked against (a)'s fp32 vectors: cosine similarity per row, and the accuracy of the same
logistic-regression probe (colhead's LogRegHead) trained on elpv train and scored on elpv test.

    python bench/extract.py            # ~3 minutes on 2 cores
    python bench/extract.py --quick    # ~1 minute
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def side_by_side(name: str, ds, tmp: Path, repeats: int, warmup: bool = False) -> dict:
    """Time (a) and (b) interleaved on ``ds``; print images/s, the ratio and vector agreement."""
    out = tmp / f"{name}.h5"
    runs = C.interleaved(
        {
            "usual": lambda: C.usual_extract(ds, workers=2),
            "colhead": lambda: C.colhead_extract(ds, out),
        },
        repeats,
        warmup=warmup,
    )
    n = len(ds)
    usual, (fast, res) = runs["usual"]["result"], runs["colhead"]["result"]
    a, b = n / runs["usual"]["median"], n / runs["colhead"]["median"]
    cos = C.cosine_rows(fast, usual)
    print(
        f"{name}: {n} images, median of {repeats}\n"
        f"  (a) usual way, fp32       {a:8.1f} img/s   runs {_fmt(runs['usual']['times'])}\n"
        f"  (b) colhead, {res.precision:<12} {b:8.1f} img/s   runs {_fmt(runs['colhead']['times'])}"
        f"   (last run: read {res.read_s:.1f} s, column {res.column_s:.1f} s, write "
        f"{res.write_s:.2f} s)\n"
        f"  ratio (b)/(a)             {b / a:8.2f}x   (per round: "
        + " ".join(
            f"{u / c:.2f}x" for u, c in zip(runs["usual"]["times"], runs["colhead"]["times"])
        )
        + ")\n"
        f"  cosine (b) vs (a) fp32    mean {cos.mean():.5f}  min {cos.min():.5f}"
    )
    return {"usual": usual, "fast": fast, "ratio": b / a, "cos": cos}


def _fmt(times) -> str:
    return " ".join(f"{t:.1f}s" for t in times)


def probe(feats_usual, feats_fast, n_train: int, labels: np.ndarray, resplits: int) -> None:
    """The same LogRegHead on both sets of vectors: on elpv's own train/test split (C swept on a
    validation part of train), then the mean over seeded stratified re-splits of all the images
    with that C fixed, which averages out which few test images happen to flip."""
    from sklearn.model_selection import StratifiedShuffleSplit

    from colhead.heads import LogRegHead

    accs, preds, cs = {}, {}, {}
    y_tr, y_te = labels[:n_train], labels[n_train:]
    for name, f in (("usual fp32", feats_usual), ("colhead", feats_fast)):
        head = LogRegHead(random_state=0).fit(f[:n_train], y_tr)
        preds[name] = head.predict(f[n_train:])
        accs[name], cs[name] = 100.0 * np.mean(preds[name] == y_te), head.C_
        print(f"  probe accuracy, {name:<10} {accs[name]:6.2f}%  (C = {head.C_:g})")
    diff = accs["colhead"] - accs["usual fp32"]
    agree = 100.0 * np.mean(preds["colhead"] == preds["usual fp32"])
    print(
        f"  difference                {diff:+6.2f} points (one test image = "
        f"{100 / len(y_te):.2f}); predictions agree on {agree:.1f}% of {len(y_te)} test images"
    )
    split = StratifiedShuffleSplit(resplits, test_size=len(y_te) / len(labels), random_state=0)
    d = []
    for tr, te in split.split(feats_usual, labels):
        a = [
            np.mean(
                LogRegHead(C=cs["usual fp32"]).fit(f[tr], labels[tr]).predict(f[te]) == labels[te]
            )
            for f in (feats_usual, feats_fast)
        ]
        d.append(100.0 * (a[1] - a[0]))
    print(
        f"  over {resplits} seeded re-splits (C = {cs['usual fp32']:g} for both): colhead - usual "
        f"= {np.mean(d):+.2f} +- {np.std(d) / np.sqrt(len(d)):.2f} points (mean +- s.e.)"
    )


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="fewer images and one round")
    p.add_argument("--jpegs", type=int, default=None, help="large JPEGs (default 96, quick 16)")
    p.add_argument("--resplits", type=int, default=10, help="seeded re-splits for the probe")
    p.add_argument("--train", type=int, default=None, help="elpv train images (600, quick 150)")
    p.add_argument("--test", type=int, default=None, help="elpv test images (300, quick 100)")
    p.add_argument("--repeats", type=int, default=None, help="rounds of a b (default 2, quick 1)")
    args = p.parse_args(argv)
    q = args.quick
    n_jpeg = args.jpegs or (16 if q else 96)
    n_train, n_test = args.train or (150 if q else 600), args.test or (100 if q else 300)
    repeats = args.repeats or (1 if q else 2)

    from colhead.extract import Dataset

    print(f"machine: {C.machine()}")
    with tempfile.TemporaryDirectory(prefix="colhead-bench-") as tmp:
        tmp = Path(tmp)
        C.write_jpegs(tmp / "jpegs", n_jpeg)
        big = C.folder_dataset(tmp / "jpegs")
        # The JPEG set is small and fast: an untimed warm-up round and one more timed round.
        r_big = side_by_side("large JPEGs 2000x1500", big, tmp, repeats + 1, warmup=True)

        tr, te = C.elpv_subset("train", n_train), C.elpv_subset("test", n_test)
        both = Dataset(
            spec=f"{tr.spec}+{te.spec}",
            ids=tr.ids + te.ids,
            labels=tr.labels + te.labels,
            classes=tr.classes,
            paths=tr.paths + te.paths,
        )
        r_small = side_by_side("elpv 300x300 PNG", both, tmp, repeats)
        probe(r_small["usual"], r_small["fast"], len(tr), np.array(both.labels), args.resplits)
    print(
        f"summary: ratio {r_big['ratio']:.2f}x (large JPEGs), {r_small['ratio']:.2f}x (elpv); "
        f"mean cosine {r_big['cos'].mean():.4f} / {r_small['cos'].mean():.4f}; target >= 3x and "
        ">= 0.99"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
