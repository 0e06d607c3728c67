"""Few-shot accuracy of every head on one cached column, at 1/5/10/all labels per class.

Issue 15's measurement: the column's vectors are extracted ONCE into a cache, then every head of
the registry (with the comparison protocol's settings, ``heads.make_protocol_head``) is fitted on
``n`` labelled images per class drawn from the training split and scored on the whole test split,
``--repeats`` seeds per shot count. Reference rows show what the protocol replaced ("logreg C=1,
standardised": the old fixed-C probe; "mlp, no fallback": the MLP trained on any number of
labels; "ncm, no power transform": plain CL2N). ``ncm-semi`` is semi-supervised: it also sees
the rest of the training split's images, never their labels, and never the test images.

Fashion-MNIST, 2,000 images (200 per class, seeded) from Debian's dataset-fashion-mnist::

    apt-get install -y dataset-fashion-mnist
    python bench/fewshot.py --make-folder /tmp/fm2k          # 2,000 PNGs in class folders
    colhead extract --data folder:/tmp/fm2k --out /tmp/fm.h5  # default column, ~1 min
    python bench/fewshot.py /tmp/fm.h5                       # 1,500 train / 500 test
    colhead extract --column efficientnet_lite0:full --data folder:/tmp/fm2k --out /tmp/fm_full.h5
    python bench/fewshot.py /tmp/fm_full.h5 --repeats 20     # the full image, not centre-cropped

It prints mean top-1 accuracy (%) and its standard deviation over the seeds, and the settings
each head chose (``heads.describe_head``) at the first seed.
"""

from __future__ import annotations

import argparse
import gzip
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("COLHEAD_OFFLINE", "1")

FASHION = Path("/usr/share/datasets/fashion-mnist")
NAMES = ["T-shirt_top", "Trouser", "Pullover", "Dress", "Coat"]
NAMES += ["Sandal", "Shirt", "Sneaker", "Bag", "Ankle_boot"]


def make_folder(root: Path, per_class: int = 200, seed: int = 0) -> None:
    """``per_class`` seeded Fashion-MNIST training images of each class as PNGs under ``root``."""
    from PIL import Image

    def idx(path: Path) -> np.ndarray:
        data = gzip.open(path).read()
        dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(data[3])]
        return np.frombuffer(data, np.uint8, offset=4 + 4 * data[3]).reshape(dims)

    X = idx(FASHION / "train-images-idx3-ubyte.gz")
    y = idx(FASHION / "train-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    for c, name in enumerate(NAMES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in rng.permutation(np.flatnonzero(y == c))[:per_class]:
            Image.fromarray(X[i]).save(root / name / f"fm{i:05d}.png")
    print(f"{per_class * len(NAMES)} images in {root}")


def few_shot(y: np.ndarray, n, seed: int) -> np.ndarray:
    if n == "all":
        return np.arange(len(y))
    rng = np.random.default_rng(seed)
    return np.sort(
        np.concatenate([rng.permutation(np.flatnonzero(y == c))[:n] for c in np.unique(y)])
    )


def methods():
    """name -> (make(per_class, seed), uses unlabelled images): the registry's heads under the
    protocol, then references."""
    from colhead.heads import DEFAULT_HEADS, LogRegHead, MLPHead, NCMHead, head_kind
    from colhead.heads import make_protocol_head as make

    out = {n: (lambda pc, s, n=n: make(n, pc, seed=s), head_kind(n).uses_unlabelled)
           for n in DEFAULT_HEADS}  # fmt: skip
    out["logreg C=1, standardised (old)"] = (
        lambda pc, s: LogRegHead(C=None if pc >= 5 else 1.0, random_state=s),
        False,
    )
    out["mlp, no fallback (old)"] = (lambda pc, s: MLPHead(random_state=s), False)
    out["ncm, no power transform (old)"] = (lambda pc, s: NCMHead(), False)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("cache", nargs="?", help="cache of the 2,000 images (colhead extract --out)")
    p.add_argument("--make-folder", type=Path, help="write the 2,000-image folder here and stop")
    p.add_argument("--shots", default="1,5,10,all")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--only", default=None, help="method names to run, separated by ';'")
    args = p.parse_args(argv)
    if args.make_folder:
        make_folder(args.make_folder)
        return 0
    if not args.cache:
        p.error("give the cache file, or --make-folder DIR")

    from sklearn.model_selection import train_test_split

    from colhead.cache import open_cache
    from colhead.heads import describe_head

    c = open_cache(args.cache)
    X, y = np.asarray(c.features, dtype=np.float32), np.asarray(c.labels)
    i_tr, i_te = train_test_split(
        np.arange(len(y)), test_size=args.test_size, stratify=y, random_state=0
    )
    X_tr, y_tr, X_te, y_te = X[i_tr], y[i_tr], X[i_te], y[i_te]
    shots = [s if s == "all" else int(s) for s in args.shots.split(",")]
    todo = methods()
    if args.only:
        todo = {k: v for k, v in todo.items() if k in args.only.split(";")}
    print(
        f"{args.cache}: {c.identity.get('column')}, {X.shape[1]} dims; {len(y_tr)} train, "
        f"{len(y_te)} test, {len(np.unique(y))} classes; {args.repeats} seeds; top-1 %"
    )
    table, settings = {}, {}
    t0 = time.perf_counter()
    for name, (make, unlabelled) in todo.items():
        for n in shots:
            accs = []
            for seed in range(1 if n == "all" else args.repeats):
                idx = few_shot(y_tr, n, seed)
                per_class = int(np.bincount(y_tr[idx]).min())
                head = make(per_class, seed)
                if unlabelled:  # the rest of the training split, labels withheld
                    head.fit(X_tr[idx], y_tr[idx], X_unlabelled=np.delete(X_tr, idx, axis=0))
                else:
                    head.fit(X_tr[idx], y_tr[idx])
                accs.append(100 * float(np.mean(head.predict(X_te) == y_te)))
                if seed == 0:
                    settings[name, n] = describe_head(head)
            table[name, n] = accs
        row = "".join(
            f"{statistics.mean(table[name, n]):7.1f} ±{statistics.pstdev(table[name, n]):4.1f}"
            for n in shots
        )
        print(f"| {name:<32}|{row}   ({time.perf_counter() - t0:.0f} s)", flush=True)
    print("settings chosen (seed 0):")
    keys = ("C_", "selection_", "fallback_", "normalize", "best_epoch_", "k_used_")
    for (name, n), d in settings.items():
        shown = {k: d[k] for k in keys if k in d}
        print(f"  {name:<32} {str(n):>4}: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
