"""The ``colhead`` command line: thin adapters over the library.

``main(argv) -> int`` is the one place that turns expected errors into ``error: ...`` on stderr
and exit code 1; argparse's own usage errors keep exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time


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
    q = csub.add_parser("merge", help="merge caches of one configuration into one file")
    q.add_argument("files", nargs="+", metavar="FILE")
    q.add_argument("-o", "--out", required=True, help="merged cache (may be one of the inputs)")
    q = csub.add_parser("ls", help="list the caches of a folder: column, dataset, rows, size")
    q.add_argument("dir", nargs="?", default=None, help="folder (default: the cache folder)")
    q.add_argument("--json", action="store_true")
    q = csub.add_parser("gc", help="remove incomplete caches, dead locks, temp files (dry run)")
    q.add_argument("dir", nargs="?", default=None, help="folder (default: the cache folder)")
    q.add_argument("--yes", action="store_true", help="really remove them (default: dry run)")

    p = sub.add_parser("heads", help="train heads on a cache, score them on another")
    p.add_argument("--train", required=True, help="training cache")
    p.add_argument("--test", required=True, help="test cache")
    p.add_argument("--val", default=None, help="validation cache (else split from --train)")
    p.add_argument("--head", default="logreg,mlp,knn", help="comma-separated: logreg,mlp,knn")
    p.add_argument("--save", default=None, help="folder to save the fitted heads in")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("compare", help="column + heads against a scratch CNN, with a report")
    _add_compare_args(p, data_required=True)

    p = sub.add_parser("demo", help="compare on the embedded offline default (lite0 over elpv)")
    _add_compare_args(p, data_required=False)
    p.add_argument(
        "--quick", action="store_true", help="smaller run (shots 1,all, 1 repeat, 5 scratch epochs)"
    )
    # Sized for a laptop: a few minutes on 2 CPU cores, most of it the one-off extraction.
    p.set_defaults(shots="1,10,all", repeats=2, scratch_epochs=10)

    p = sub.add_parser("predict", help="label new images with a saved head and its column")
    p.add_argument("--head", required=True, help="a head file (.npz) from heads --save")
    p.add_argument("--column", default=None, help="must be the head's column (default: it)")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+")
    _add_serve_parser(sub)
    return ap


def _add_compare_args(p: argparse.ArgumentParser, *, data_required: bool) -> None:
    p.add_argument("--data", required=data_required, default="elpv", help="dataset spec")
    p.add_argument("--column", default="efficientnet_lite0")
    p.add_argument("--shots", default="1,5,10,all", help="labelled images per class")
    p.add_argument("--repeats", type=int, default=3, help="seeds per shot count")
    p.add_argument("--head", default="logreg,mlp,knn")
    p.add_argument("--no-scratch", action="store_true", help="skip the scratch CNN")
    p.add_argument("--scratch-epochs", type=int, default=None)
    p.add_argument("--out", default=None, help="report folder (default reports/<dataset>)")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--train-split", default="train")
    p.add_argument("--test-split", default="test")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")


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
        ConnectionError,  # --engine ray --ray-address to a cluster that is not there
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
    handlers = {
        "columns": _columns,
        "extract": _extract,
        "cache": _cache,
        "heads": _heads,
        "compare": _compare,
        "demo": _demo,
        "predict": _predict,
        "serve": _serve,
    }
    return handlers[args.cmd](args)


def _heads(args) -> int:
    from .compare import parse_heads, train_heads

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
    from .compare import compare

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


def _predict(args) -> int:
    from .predict import Predictor

    pred = Predictor(args.head, column=args.column, device=args.device, precision=args.precision)
    results = pred.predict(args.images, top=args.top)
    if args.json:
        print(json.dumps([{"image": i, **r} for i, r in zip(args.images, results)], indent=2))
        return 0
    bad = 0
    for image, r in zip(args.images, results):
        if "error" in r:
            bad += 1
            print(f"{image}\terror: {r['error']}")
        else:
            alts = ", ".join(f"{t['label']} {t['probability']:.2f}" for t in r["top"][1:])
            print(
                f"{image}\t{r['label']}\t{r['probability']:.3f}" + (f"\t({alts})" if alts else "")
            )
    return 1 if bad == len(results) else 0


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API: embed and classify images (colhead[serve])")
    p.add_argument("--column", default="efficientnet_lite0", help="the column to serve")
    p.add_argument("--heads", default=None, help="folder of saved heads (*.npz)")
    p.add_argument("--host", default="127.0.0.1", help="non-loopback needs a token or flag")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    p.add_argument("--max-batch", type=int, default=32, help="most images per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch")
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    p.add_argument("--max-images", type=int, default=64, help="most images per request")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body")
    p.add_argument("--cache-size", type=int, default=4096, help="vectors kept by content hash")
    p.add_argument("--allow-remote", action="store_true", help="listen beyond loopback, no token")


def _serve(args) -> int:
    try:
        from .serve import run
    except ImportError as e:  # fastapi/uvicorn are the optional extra colhead[serve]
        raise RuntimeError(str(e)) from None
    # run() refuses a non-loopback host without a token before the column loads.
    run(
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
        column=args.column,
        heads_dir=args.heads,
        device=args.device,
        precision=args.precision,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        max_images=args.max_images,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        cache_size=args.cache_size,
    )
    return 0


def _columns(args) -> int:
    from .extract import describe_columns

    rows = describe_columns()
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
    if args.cache_cmd == "merge":
        from .cache import merge_caches

        s = merge_caches(args.files, args.out)
        print(
            f"{s['path']}: {s['rows']} rows, {s['skipped']} skipped, {s['duplicates']} duplicate "
            f"rows dropped; {'complete' if s['complete'] else 'INCOMPLETE'}."
        )
        return 0
    if args.cache_cmd in ("ls", "gc"):
        from .cache import gc_caches, list_caches
        from .extract._extractor import default_cache_dir

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
        lines.append(f"  {id_}: {reason}")
    if len(sk) > 20:
        lines.append(f"  ... and {len(sk) - 20} more (--json lists all)")
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
