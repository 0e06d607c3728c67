"""The ``colhead`` command line: thin adapters over the library.

``main(argv) -> int`` is the one place that turns expected errors into ``error: ...`` on stderr
and exit code 1; argparse's own usage errors keep exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys


def _add_extract_args(p: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    p.add_argument("--column", default="efficientnet_lite0", help="column name (colhead columns)")
    p.add_argument("--data", required=data_required, help="dataset spec, e.g. folder:PATH, elpv")
    p.add_argument("--split", default=None, help="dataset split (train/val/test/all)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", default=None, help="cache file to write")
    g.add_argument("--cache-dir", default=None, help="folder of caches (env COLHEAD_CACHE)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decode workers (default 2)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--weights", default=None, help="local weights file for the column")


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    ap = argparse.ArgumentParser(
        prog="colhead",
        description="Reuse pretrained vision columns: extract features once, train heads fast.",
    )
    ap.add_argument("--version", action="version", version=f"colhead {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = sub.add_parser("columns", help="list the columns and whether they work offline")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("extract", help="run a column over a dataset into a feature cache")
    _add_extract_args(p)
    p.add_argument("--no-draft", action="store_true", help="full JPEG decode, no DCT downscale")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-absolute", action="store_true", help="CSV may list any path")
    p.add_argument("--retry-skipped", action="store_true", help="retry items skipped before")
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument("--ray-address", default=None, help="Ray cluster address (engine ray)")

    p = sub.add_parser("cache", help="inspect and check caches")
    csub = p.add_subparsers(dest="cache_cmd", required=True, metavar="ACTION")
    q = csub.add_parser("info", help="provenance, counts and skipped items of a cache")
    q.add_argument("file")
    q.add_argument("--json", action="store_true")
    q = csub.add_parser("verify", help="check a cache thoroughly; exit 1 if anything is wrong")
    q.add_argument("file")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .cache import CacheError, CacheLockedError, CacheMismatchError
    from .extract import BadImage, ColumnUnavailableError

    expected = (
        ValueError,
        FileNotFoundError,
        PermissionError,
        IsADirectoryError,
        CacheError,
        CacheLockedError,
        CacheMismatchError,
        ColumnUnavailableError,
        BadImage,
    )
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every batch committed so far is kept; rerun the same command to "
            "resume.",
            file=sys.stderr,
        )
        return 130
    except expected as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # e.g. CUDA asked for but absent: say it, without a traceback
        print(f"error: {e}", file=sys.stderr)
        return 1


def _dispatch(args) -> int:
    return {"columns": _columns, "extract": _extract, "cache": _cache}[args.cmd](args)


def _columns(args) -> int:
    from .extract import get_column, list_columns

    rows = []
    for name in list_columns():
        s = get_column(name)
        rows.append(
            {
                "name": name,
                "dim": s.dim,
                "offline": s.available(),
                "source": s.source,
                "licence": s.licence,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'column':<22}{'dim':>6}  {'offline':<8}source")
    for r in rows:
        print(
            f"{r['name']:<22}{r['dim'] or '?':>6}  {'yes' if r['offline'] else 'no':<8}"
            f"{r['source']}"
        )
    print(
        "\nAlso: tv/NAME (any torchvision classifier) and timm/NAME (any timm model); these "
        "download their weights when online, or take --weights FILE."
    )
    return 0


def _extract(args) -> int:
    kwargs = dict(
        split=args.split,
        out=args.out,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        workers=args.workers,
        device=args.device,
        precision=args.precision,
        store_dtype=args.store_dtype,
        weights=args.weights,
        draft=not args.no_draft,
        progress=not args.no_progress,
        allow_absolute=args.allow_absolute,
        retry_skipped=args.retry_skipped,
    )
    if args.engine == "ray":
        try:
            from .extract._ray import extract_ray
        except ImportError as e:
            raise ValueError(f"--engine ray is not available here ({e}).") from None
        result = extract_ray(args.column, args.data, ray_address=args.ray_address, **kwargs)
    else:
        from .extract import extract

        result = extract(args.column, args.data, **kwargs)
    print(result.summary())
    if result.skipped_now:
        print(
            f"{result.skipped_now} items skipped; see them with: colhead cache info {result.path}"
        )
    return 0


def _cache(args) -> int:
    from .cache import cache_info, verify_cache

    if args.cache_cmd == "info":
        info = cache_info(args.file)
        if args.json:
            print(json.dumps(info, indent=2, default=str))
        else:
            print(format_info(info))
        return 0
    if args.cache_cmd == "verify":
        problems = verify_cache(args.file)
        if problems:
            print(f"{args.file}: {len(problems)} problem(s):")
            for p in problems:
                print(f"  - {p}")
            return 1
        print(f"{args.file}: OK")
        return 0
    raise ValueError(f"Unknown cache action {args.cache_cmd!r}.")


def format_info(info: dict) -> str:
    ident, meta = info["identity"], info["metadata"]
    col = meta.get("column", {})
    runs = meta.get("runs", [])
    lines = [
        f"cache      {info['path']} ({info['size_bytes'] / 1e6:.1f} MB, "
        f"{'complete' if info['complete'] else 'INCOMPLETE'})",
        f"rows       {info['rows']} x {info['dim']} {info['store_dtype']}"
        + (f" (+{info['stale_rows']} stale)" if info["stale_rows"] else ""),
        f"dataset    {ident.get('dataset')} ({len(info['classes'])} classes)",
        f"column     {ident.get('column')}: {col.get('description', '')}",
        f"weights    {col.get('weights_id', '')} sha256 {ident.get('weights_sha256', '')[:16]}…",
        f"source     {col.get('source', '')} [{col.get('licence', '')}]",
        f"preprocess {json.dumps(ident.get('preprocess'))}",
        f"precision  {ident.get('precision')}",
        "versions   " + ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()),
        f"created    {meta.get('created_at', '?')}; {len(runs)} run(s), last on "
        + (f"{runs[-1].get('device', '?')} at {runs[-1].get('started_at', '?')}" if runs else "-"),
        f"key        {info['config_key']}",
    ]
    if info.get("writer"):
        w = info["writer"]
        lines.append(f"writer     being written by pid {w.get('pid')} on {w.get('host')}")
    sk = info["skipped"]
    lines.append(f"skipped    {len(sk)}")
    for id_, reason in sk[:20]:
        lines.append(f"  {id_}: {reason}")
    if len(sk) > 20:
        lines.append(f"  ... and {len(sk) - 20} more (--json lists all)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
