"""``colhead cache export``: a cache's vectors as npz, parquet or csv (issue 11)."""

from __future__ import annotations

import sys


def add_parser(csub) -> None:
    """Add ``export`` to the ``cache`` actions (``csub``: their sub-parsers)."""
    q = csub.add_parser(
        "export",
        help="write a cache's vectors, ids and labels as npz, parquet or csv",
        description="Write a cache's live rows as npz (features, ids, labels, classes, hashes), "
        "parquet (id, label, class, hash, vector; in row groups) or csv (small caches).",
    )
    q.add_argument("file", metavar="CACHE")
    q.add_argument("-o", "--out", required=True, help="the file to write")
    q.add_argument(
        "--format", default=None, help="npz, parquet or csv (default: from --out's suffix)"
    )
    q.add_argument("--normalize", action="store_true", help="scale vectors to unit L2 norm")
    q.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args) -> int:
    from ..cache import export_cache

    try:
        s = export_cache(
            args.file, args.out, format=args.format, normalize=args.normalize, overwrite=args.force
        )
    except ImportError as e:  # an optional library (pyarrow) is missing: say so, no traceback
        raise RuntimeError(str(e)) from None
    print(
        f"{s['path']}: {s['rows']} rows x {s['dim']} ({'unit-norm ' if s['normalized'] else ''}"
        f"float32) as {s['format']}, {s['bytes'] / 1e6:.1f} MB."
    )
    if not s["complete"]:
        print(
            f"warning: {args.file} is incomplete (its extraction was interrupted or is still "
            "running): only the rows it holds so far were exported.",
            file=sys.stderr,
        )
    return 0
