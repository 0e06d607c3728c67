"""``colhead heads``, ``colhead compare`` and ``colhead demo``."""

from __future__ import annotations

import argparse
import json
import time

from ._options import DEFAULT_COLUMN, add_device_args
from ._text import printable

# The demo shows the stage features beside the plain column (issue 15), and ranks Lite1/Lite2 too
# where their packages (the `columns` extra) are installed: each column extracted costs the demo
# time (~2.5 min each for elpv on 2 cores), so only a user who installed them pays it.
DEMO_COLUMNS = f"{DEFAULT_COLUMN},{DEFAULT_COLUMN}:stages"


def demo_columns() -> str:
    """The demo's columns: ``DEMO_COLUMNS``, then every larger Lite column that is installed."""
    from ..extract import get_column

    more = [f"efficientnet_lite{n}" for n in (1, 2)]
    return ",".join([DEMO_COLUMNS, *(c for c in more if get_column(c).available())])


# The default is the head registry's default set, read when the command runs: importing the
# heads (torch, scikit-learn) to print --help would take seconds.
HEADS_HELP = "comma-separated head kinds, e.g. logreg,knn (default: the registry's default set)"


def add_parsers(sub) -> None:
    p = sub.add_parser("heads", help="train heads on a cache, score them on another")
    p.add_argument("--train", required=True, help="training cache (.h5)")
    p.add_argument("--test", required=True, help="test cache (.h5), same column as --train")
    p.add_argument(
        "--val", default=None, help="validation cache, same column (default: split from --train)"
    )
    p.add_argument("--head", default=None, help=HEADS_HELP)
    p.add_argument(
        "--unlabelled",
        default=None,
        help="cache of images without labels, same column: semi-supervised heads (ncm-semi) "
        "learn from them too; the others ignore them (default: none)",
    )
    p.add_argument(
        "--save",
        default=None,
        help="folder to save the fitted heads in, as NAME-HEAD.npz (default: not saved)",
    )
    p.add_argument(
        "--name",
        default=None,
        help="NAME of the saved head files (default: the training data's name)",
    )
    p.add_argument("--json", action="store_true", help="print the scores as JSON instead of text")
    p.set_defaults(func=_heads)

    p = sub.add_parser("compare", help="column + heads against a scratch CNN, with a report")
    _add_compare_args(p)
    p.set_defaults(func=_compare)

    p = sub.add_parser("demo", help="compare on the embedded offline default (lite0 over elpv)")
    _add_compare_args(p, demo=True)
    p.add_argument(
        "--quick", action="store_true", help="smaller run: shots 1,all, 1 repeat, 5 scratch epochs"
    )
    # Sized for a laptop: a few minutes on 2 CPU cores, most of it the one-off extraction. 5
    # repeats: a few-shot repeat costs seconds (heads, and the scratch CNN on 4-40 images), and
    # the t-interval over 2 repeats (12.7 standard errors) spanned 0-100% at 1 and 10 labels.
    p.set_defaults(shots="1,10,all", repeats=5, scratch_epochs=10, func=_compare)


def _add_compare_args(p: argparse.ArgumentParser, *, demo: bool = False) -> None:
    p.add_argument(
        "--data",
        default="elpv" if demo else None,
        help="data spec: a built-in name, folder:PATH (split sub-folders train/ val/ test/ are "
        "used as given) or csv:FILE; else use --train-data and --test-data",
    )
    p.add_argument("--train-data", default=None, help="data spec of the training split")
    p.add_argument("--test-data", default=None, help="data spec of the test split")
    p.add_argument(
        "--val-data",
        default=None,
        help="data spec of a validation split (default: carved from the training images)",
    )
    p.add_argument(
        "--column",
        default=None if demo else DEFAULT_COLUMN,
        help="column name (colhead columns), or several A,B,...: the first gets the full "
        "comparison, each other its heads on the same splits and shots, and the report ranks them"
        + (f" (default: {DEMO_COLUMNS}, then Lite1/Lite2 where installed)" if demo else ""),
    )
    p.add_argument("--shots", default="1,5,10,all", help="labelled images per class")
    p.add_argument("--repeats", type=int, default=3, help="seeds per shot count")
    p.add_argument("--head", default=None, help=HEADS_HELP)
    p.add_argument("--no-scratch", action="store_true", help="skip the scratch CNN")
    p.add_argument(
        "--scratch-epochs",
        type=int,
        default=None,
        help="most epochs of the scratch CNN" + ("" if demo else " (default: the model's own)"),
    )
    p.add_argument(
        "--finetune",
        action="store_true",
        help="add the first column unfrozen + a linear layer, trained end to end (slow on a CPU)",
    )
    p.add_argument(
        "--scratch-column",
        action="store_true",
        help="add the first column's architecture from random weights, trained end to end (slow)",
    )
    p.add_argument(
        "--column-epochs",
        type=int,
        default=None,
        help="epochs of --finetune and --scratch-column (default: 3)",
    )
    p.add_argument(
        "--out",
        default=None,
        help="report folder (default: reports/<name of the data>; an existing report is kept "
        "and the new one written beside it, unless --force)",
    )
    p.add_argument("--force", action="store_true", help="replace an existing report in --out")
    p.add_argument(
        "--cache-dir",
        default=None,
        help="folder of caches (default: env COLHEAD_CACHE or ~/.cache)",
    )
    p.add_argument(
        "--train-split", default="train", help="split of a built-in data set to train on"
    )
    p.add_argument("--test-split", default="test", help="split of a built-in data set to test on")
    add_device_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the splits, shots and models")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _heads(args) -> int:
    from ..compare import parse_heads, train_heads

    rows = train_heads(
        args.train,
        args.test,
        heads=parse_heads(args.head),
        val_path=args.val,
        unlabelled_path=args.unlabelled,
        save_dir=args.save,
        name=args.name,
        log=(lambda s: None) if args.json else (lambda s: print(printable(s))),
    )
    if args.json:
        print(json.dumps(rows, indent=2))
    return 0


def _compare(args) -> int:
    from ..compare import compare

    shots, repeats = args.shots, args.repeats
    if getattr(args, "quick", False):
        shots, repeats, args.scratch_epochs = "1,all", 1, 5
    t0 = time.perf_counter()
    report = compare(
        None if (args.train_data or args.test_data) and args.data == "elpv" else args.data,
        train_data=args.train_data,
        test_data=args.test_data,
        val_data=args.val_data,
        column=args.column or demo_columns(),
        shots=shots,
        repeats=repeats,
        heads=args.head,
        scratch=not args.no_scratch,
        scratch_epochs=args.scratch_epochs,
        finetune=args.finetune,
        scratch_column=args.scratch_column,
        column_epochs=args.column_epochs,
        out=args.out,
        force=args.force,
        cache_dir=args.cache_dir,
        train_split=args.train_split,
        test_split=args.test_split,
        device=args.device,
        precision=args.precision,
        seed=args.seed,
        progress=not args.no_progress,
        log=lambda s: print(printable(s)),
    )
    print(f"\nreport written in {time.perf_counter() - t0:.0f} s: {printable(str(report))}")
    print(f"plots and results.json beside it in {printable(str(report.parent))}/")
    return 0
