"""Head-experiment turnaround: the workshop's protocol against colhead's extract-once-then-fit.

(a) the workshop's transfer protocol (docs: the notebook colhead grew from): the frozen column
    recomputed on the raw images every epoch, a linear head 1280 -> classes trained with AdamW
    (lr 1e-3, weight decay 0.01), batch 32, for ``--epochs`` epochs (10, as the workshop ran),
    the evaluation set scored after every epoch; the column is built inside its timer;
(b) colhead: ``colhead.extract`` of the train and test images into fresh caches (the column is
    built inside this timer too), then LogRegHead (C swept on a validation split), KNNHead (DINO
    k-NN) and MLPHead fitted from the cache and scored on the test cache.

Same elpv images and labels for both. Everything printed is measured: (a) really runs every
epoch it reports (no extrapolation, no replayed accuracy, issue 16), and its accuracy is the one
after its last real epoch. The two run in alternated order (a b, b a, a b, ...) for ``--rounds``
rounds; each figure is the median over rounds with its range.

Then the fit time of each head against N (1k, 10k, 50k synthetic 1280-d vectors, 10 Gaussian
blobs); a head whose next fit is expected to take over ``--cap`` seconds is skipped and says so.

    python bench/heads.py           # 3 rounds of 10 epochs: ~15 minutes on 2 cores
    python bench/heads.py --quick   # 1 round of 2 epochs on fewer images: a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

EPOCHS, LR, WD, BATCH = 10, 1e-3, 0.01, 32


class Workshop:
    """The notebook's transfer protocol: frozen column on raw images every epoch, linear head."""

    def __init__(self, train_ds, test_ds, n_classes: int, seed: int = 0):
        import torch
        from torch import nn

        self.train_ds, self.test_ds = train_ds, test_ds
        self.column = C.usual_model()
        for p in self.column.parameters():
            p.requires_grad_(False)
        self.y_train = np.array([train_ds.classes.index(c) for c in train_ds.labels])
        self.y_test = np.array([test_ds.classes.index(c) for c in test_ds.labels])
        self.head, self.opt, self.order = _head(n_classes, seed)
        self.loss = nn.CrossEntropyLoss()
        self.torch = torch

    def epoch(self) -> float:
        """One real epoch (train pass + evaluation pass); returns the test accuracy (%)."""
        torch = self.torch
        perm = self.order()
        from colhead.extract import get_column

        pre = get_column("efficientnet_lite0").preprocess
        items = C.UsualImages(self.train_ds.paths, self.y_train, pre)
        loader = torch.utils.data.DataLoader(
            items,
            batch_sampler=[perm[s : s + BATCH] for s in range(0, len(perm), BATCH)],
            num_workers=2,
        )
        for x, y in loader:
            with torch.no_grad():
                f = self.column(x)
            loss = self.loss(self.head(f), y)
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
        test = C.UsualImages(self.test_ds.paths, self.y_test, pre)
        correct = 0
        with torch.no_grad():
            for x, y in torch.utils.data.DataLoader(test, batch_size=BATCH, num_workers=2):
                correct += int((self.head(self.column(x)).argmax(1) == y).sum())
        return 100.0 * correct / len(self.y_test)


def workshop_protocol(train_ds, test_ds, epochs: int) -> dict:
    """The whole workshop protocol, model build included: seconds and final test accuracy."""
    t0 = time.perf_counter()
    ws = Workshop(train_ds, test_ds, len(train_ds.classes))
    acc = [ws.epoch() for _ in range(epochs)]
    return {"seconds": time.perf_counter() - t0, "acc": acc[-1]}


def _head(n_classes: int, seed: int):
    """The linear head, its AdamW and its per-epoch shuffle, all from one seed."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    head = nn.Linear(1280, n_classes)
    opt = torch.optim.AdamW(head.parameters(), lr=LR, weight_decay=WD)
    gen = torch.Generator().manual_seed(seed)
    return head, opt, lambda: torch.randperm(len_of[0], generator=gen).tolist()


len_of = [0]  # training-set size for _head's shuffles (set in main)


def colhead_protocol(train_ds, test_ds, tmp: Path) -> dict:
    """Extract both splits once, then fit and score every head from the caches; seconds each."""
    from colhead.cache import open_cache
    from colhead.heads import KNNHead, LogRegHead, MLPHead

    t = {}
    t0 = time.perf_counter()
    for name, ds in (("train", train_ds), ("test", test_ds)):
        out = tmp / f"{name}.h5"
        if out.exists():
            out.unlink()
        C.colhead_extract(ds, out)
    t["extract"] = time.perf_counter() - t0
    tr, te = open_cache(tmp / "train.h5"), open_cache(tmp / "test.h5")
    # each cache numbers its classes in order of appearance: compare by class name
    y_tr, y_te = np.array(tr.classes)[tr.labels], np.array(te.classes)[te.labels]
    acc = {}
    for name, head in (
        ("logreg", LogRegHead(random_state=0)),
        ("knn", KNNHead()),
        ("mlp", MLPHead(random_state=0, device="cpu")),
    ):
        t1 = time.perf_counter()
        tr2, te2 = open_cache(tmp / "train.h5"), open_cache(tmp / "test.h5")  # as a new session
        head.fit(tr2.features, y_tr)
        acc[name] = 100.0 * float(np.mean(head.predict(te2.features) == y_te))
        t[name] = time.perf_counter() - t1
    return {"t": t, "acc": acc}


def blobs(n: int, dim: int = 1280, classes: int = 10, seed: int = 0):
    """``n`` rows around 10 fixed centres (the same for every ``n``) and 1000 held-out rows."""
    centres = np.random.default_rng(0).standard_normal((classes, dim)).astype(np.float32) * 0.1
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n + 1000)
    X = centres[y] + rng.standard_normal((n + 1000, dim), dtype=np.float32)
    return X[:n], y[:n], X[n:], y[n:]


def scaling(sizes, cap: float) -> None:
    from colhead.heads import KNNHead, LogRegHead, MLPHead

    heads = {
        "logreg (C swept, 12 values)": lambda: LogRegHead(random_state=0),
        "logreg (C = 1, one fit)": lambda: LogRegHead(C=1.0),
        "knn (k=20; fit + 1000 queries)": lambda: KNNHead(),
        "mlp (early stopping)": lambda: MLPHead(random_state=0, device="cpu"),
    }
    print(f"fit time against N (1280 dims, 10 blobs; + predict of 1000 held-out rows; cap {cap} s)")
    print(f"  {'head':<32}" + "".join(f"{f'N={n}':>22}" for n in sizes))
    for name, make in heads.items():
        cells, last = [], None
        for n in sizes:
            if last is not None and last[1] * n / last[0] > cap:
                cells.append(f"skip (>~{last[1] * n / last[0]:.0f} s)")
                continue
            X, y, Xq, yq = blobs(n, seed=n)
            t = time.perf_counter()
            head = make().fit(X, y)
            acc = 100 * np.mean(head.predict(Xq) == yq)
            dt = time.perf_counter() - t
            last = (n, dt)
            cells.append(f"{dt:8.2f} s ({acc:5.1f}%)")
        print(f"  {name:<32}" + "".join(f"{c:>22}" for c in cells))


def _median(values) -> str:
    """``median [min-max]`` of a list of numbers."""
    return f"{statistics.median(values):.1f} [{min(values):.1f}-{max(values):.1f}]"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--train", type=int, default=None, help="elpv train images (400, quick 100)")
    p.add_argument("--test", type=int, default=None, help="elpv test images (200, quick 50)")
    p.add_argument(
        "--epochs", type=int, default=None, help="workshop epochs, all run (10, quick 2)"
    )
    p.add_argument("--rounds", type=int, default=None, help="alternated rounds (3, quick 1)")
    p.add_argument("--cap", type=float, default=None, help="skip fits expected over this (s)")
    p.add_argument("--sizes", default=None, help="N for the scaling table (1000,10000,50000)")
    args = p.parse_args(argv)
    q = args.quick
    n_train, n_test = args.train or (100 if q else 400), args.test or (50 if q else 200)
    epochs = args.epochs or (2 if q else EPOCHS)
    rounds = args.rounds or (1 if q else 3)
    cap = args.cap or (20.0 if q else 120.0)
    sizes = [int(s) for s in (args.sizes or ("1000,10000" if q else "1000,10000,50000")).split(",")]

    print(f"machine: {C.machine()}")
    train_ds, test_ds = C.elpv_subset("train", n_train), C.elpv_subset("test", n_test)
    len_of[0] = len(train_ds)
    ws, ours = [], []
    with tempfile.TemporaryDirectory(prefix="colhead-bench-") as tmp:
        for r in range(rounds):  # alternated order: a b, b a, a b, ...
            for side in "ab" if r % 2 == 0 else "ba":
                if side == "a":
                    ws.append(workshop_protocol(train_ds, test_ds, epochs))
                else:
                    ours.append(colhead_protocol(train_ds, test_ds, Path(tmp)))
            print(
                f"  round {r + 1}: (a) {ws[-1]['seconds']:.1f} s, (b) "
                f"{sum(ours[-1]['t'].values()):.1f} s",
                flush=True,
            )
    t_a = [w["seconds"] for w in ws]
    gap = statistics.median([o["acc"]["logreg"] for o in ours])
    gap -= statistics.median([w["acc"] for w in ws])
    t_b = [sum(o["t"].values()) for o in ours]
    heads = ("logreg", "knn", "mlp")
    print(
        f"elpv defect (4 classes): {n_train} train, {n_test} test images; {rounds} round(s), "
        "median [range]\n"
        f"(a) workshop, {epochs} epochs run (column built in the timer): {_median(t_a)} s; "
        f"test accuracy after epoch {epochs}: {_median([w['acc'] for w in ws])}%\n"
        f"(b) colhead: extract train+test once "
        f"{_median([o['t']['extract'] for o in ours])} s, then from the cache: "
        + ", ".join(
            f"{k} {_median([o['t'][k] for o in ours])} s ({_median([o['acc'][k] for o in ours])}%)"
            for k in heads
        )
        + f"; all together {_median(t_b)} s\n"
        f"ratio (a) / (b) extract + 3 heads: {statistics.median(t_a) / statistics.median(t_b):.1f}x"
        f" (per round: {' '.join(f'{a / b:.1f}x' for a, b in zip(t_a, t_b))})\n"
        f"ratio (a) / one more logreg experiment on the cache: "
        f"{statistics.median(t_a) / statistics.median([o['t']['logreg'] for o in ours]):.0f}x; "
        f"accuracy logreg - workshop (medians): "
        f"{gap:+.1f} points"
    )
    scaling(sizes, cap)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
