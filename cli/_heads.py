"""``colhead heads``, ``colhead compare`` and ``colhead demo``."""

from __future__ import annotations

import argparse
import json
import time

from ._options import DEFAULT_COLUMN, add_device_args


def add_parsers(sub) -> None:
    p = sub.add_parser("heads", help="train heads on a cache, score them on another")
    p.add_argument("--train", required=True, help="training cache")
    p.add_argument("--test", required=True, help="test cache")
    p.add_argument("--val", default=None, help="validation cache (else split from --train)")
    p.add_argument("--head", default="logreg,mlp,knn", help="comma-separated: logreg,mlp,knn")
    p.add_argument("--save", default=None, help="folder to save the fitted heads in")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_heads)

    p = sub.add_parser("compare", help="column + heads against a scratch CNN, with a report")
    _add_compare_args(p, data_required=True)
    p.set_defaults(func=_compare)

    p = sub.add_parser("demo", help="compare on the embedded offline default (lite0 over elpv)")
    _add_compare_args(p, data_required=False)
    p.add_argument(
        "--quick", action="store_true", help="smaller run (shots 1,all, 1 repeat, 5 scratch epochs)"
    )
    # Sized for a laptop: a few minutes on 2 CPU cores, most of it the one-off extraction.
    p.set_defaults(shots="1,10,all", repeats=2, scratch_epochs=10, func=_demo)


def _add_compare_args(p: argparse.ArgumentParser, *, data_required: bool) -> None:
    p.add_argument("--data", required=data_required, default="elpv", help="dataset spec")
    p.add_argument("--column", default=DEFAULT_COLUMN)
    p.add_argument("--shots", default="1,5,10,all", help="labelled images per class")
    p.add_argument("--repeats", type=int, default=3, help="seeds per shot count")
    p.add_argument("--head", default="logreg,mlp,knn")
    p.add_argument("--no-scratch", action="store_true", help="skip the scratch CNN")
    p.add_argument("--scratch-epochs", type=int, default=None)
    p.add_argument("--out", default=None, help="report folder (default reports/<dataset>)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    add_device_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


def _heads(args) -> int:
    from ..compare import parse_heads, train_heads

    rows = train_heads(
        args.train,
        args.test,
        heads=parse_heads(args.head),
        val_path=args.val,
        save_dir=args.save,
        log=(lambda s: None) if args.json else print,
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def _compare(args) -> int:
    from ..compare import compare

    shots, repeats = args.shots, args.repeats
    if getattr(args, "quick", False):
        shots, repeats, args.scratch_epochs = "1,all", 1, 5
    slug = "".join(c if c.isalnum() else "-" for c in args.data.split(":")[0])
    out = args.out or f"reports/{slug}"
    t0 = time.perf_counter()
    report = compare(
        args.data,
        column=args.column,
        shots=shots,
        repeats=repeats,
        heads=args.head,
        scratch=not args.no_scratch,
        scratch_epochs=args.scratch_epochs,
        out=out,
        cache_dir=args.cache_dir,
        train_split=args.train_split,
        test_split=args.test_split,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(f"\nreport written in {time.perf_counter() - t0:.0f} s: {report}")
    print(f"plots and results.json beside it in {report.parent}/")
    return 0


def _demo(args) -> int:
    if args.out is None:
        args.out = "reports/demo"
    return _compare(args)
