"""``colhead cache ...``: inspect, verify, merge, list and clean caches."""

from __future__ import annotations

import json

from . import _export
from ._text import printable, printable_name


def add_parsers(sub) -> None:
    p = sub.add_parser("cache", help="inspect and check caches")
    csub = p.add_subparsers(dest="cache_cmd", required=True, metavar="ACTION")
    q = csub.add_parser("info", help="provenance, counts and skipped items of a cache")
    q.add_argument("file")
    q.add_argument("--json", action="store_true")
    q = csub.add_parser("verify", help="check a cache thoroughly; exit 1 if anything is wrong")
    q.add_argument("file")
    q = csub.add_parser("merge", help="merge caches of one configuration into one file")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("-o", "--out", required=True, help="merged cache (may be one of the inputs)")
    q = csub.add_parser("ls", help="list the caches of a folder: column, dataset, rows, size")
    q.add_argument("dir", nargs="?", default=None, help="folder (default: the cache folder)")
    q.add_argument("--json", action="store_true")
    q = csub.add_parser("gc", help="remove incomplete caches, dead locks, temp files (dry run)")
    q.add_argument("dir", nargs="?", default=None, help="folder (default: the cache folder)")
    q.add_argument("--yes", action="store_true", help="really remove them (default: dry run)")
    _export.add_parser(csub)
    p.set_defaults(func=_cache)


def _cache(args) -> int:
    from ..cache import cache_info, verify_cache

    if args.cache_cmd == "export":
        return _export.run(args)
    if args.cache_cmd == "info":
        info = cache_info(args.file)
        if args.json:
            print(json.dumps(info, indent=2, default=str))
        else:
            print(printable(format_info(info)))
        return 0
    if args.cache_cmd == "verify":
        notes: list[str] = []
        problems = verify_cache(args.file, notes=notes)
        if problems:
            print(f"{printable_name(args.file)}: {len(problems)} problem(s):")
            for p in problems:
                print(f"  - {printable(p)}")
            return 1
        print(f"{printable_name(args.file)}: OK")
        for note in notes:  # e.g. a cache made before checksums: damage would not show
            print(f"  note: {printable(note)}")
        return 0
    if args.cache_cmd == "merge":
        from ..cache import merge_caches

        s = merge_caches(args.files, args.out)
        print(
            f"{s['path']}: {s['rows']} rows, {s['skipped']} skipped, {s['duplicates']} duplicate "
            f"rows dropped; {'complete' if s['complete'] else 'INCOMPLETE'}."
        )
        return 0
    if args.cache_cmd in ("ls", "gc"):
        from ..cache import gc_caches, list_caches
        from ..extract import default_cache_dir

        folder = args.dir or default_cache_dir()
        if args.cache_cmd == "gc":
            done = gc_caches(folder, dry_run=not args.yes)
            for path, reason in done:
                print(f"{'removed' if args.yes else 'would remove'} {path}: {reason}")
            if not done:
                print(f"{folder}: nothing to remove.")
            elif not args.yes:
                print(f"(dry run: nothing removed; `colhead cache gc {folder} --yes` removes them)")
            return 0
        entries = list_caches(folder)
        if args.json:
            print(json.dumps(entries, indent=2, default=str))
            return 0
        print(f"{'rows':>8} {'MB':>9}  {'state':<11}{'column':<22}{'dataset':<26}file")
        for e in entries:
            name = e["path"].rsplit("/", 1)[-1]
            mb = f"{e['size_bytes'] / 1e6:9.1f}"
            if e["kind"] != "cache":
                print(f"{'-':>8} {mb}  {'not a cache':<11}{name}: {e['error'][:80]}")
                continue
            state = "writing" if e["writer"] else "complete" if e["complete"] else "INCOMPLETE"
            print(f"{e['rows']:>8} {mb}  {state:<11}{e['column']:<22}{e['dataset']:<26}{name}")
        if not entries:
            print(f"{folder}: no *.h5 files.")
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
        lines.append(f"  {printable_name(id_)}: {printable_name(reason)}")
    if len(sk) > 20:
        lines.append(f"  ... and {len(sk) - 20} more (--json lists all)")
    return "\n".join(lines)
