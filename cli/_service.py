"""``colhead predict`` and ``colhead serve``: the long-lived and one-shot uses of a head."""

from __future__ import annotations

import argparse
import json
import sys

from ._options import (
    DEFAULT_COLUMN,
    add_backend_arg,
    add_data_args,
    add_device_args,
    dataset_columns,
)
from ._text import printable_name


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="label new images, or a whole data set, with a saved head and its column",
        description="Label images with a saved head: IMAGES..., or --data SPEC [--split S] "
        "(with --cache FILE to fill or reuse a feature cache), printed or written to --out CSV.",
    )
    p.add_argument("--head-file", default=None, help="a head file (.npz) from heads --save")
    # --head was predict's name for the file; elsewhere --head lists head kinds (issue 12).
    p.add_argument("--head", dest="head_alias", default=None, help=argparse.SUPPRESS)
    p.add_argument("--column", default=None, help="must be the head's column (default: it)")
    add_device_args(p)
    add_backend_arg(p)
    p.add_argument("--top", type=int, default=3, help="how many labels to rank per image")
    p.add_argument("--json", action="store_true")
    add_data_args(p, data_required=False)
    p.add_argument("--cache", default=None, help="feature cache to fill or reuse (with --data)")
    p.add_argument("--out", default=None, help="write the predictions to this .csv file")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("images", nargs="*", help="image files (or use --data)")
    p.set_defaults(func=_predict, parser=p)
    _add_serve_parser(sub)


def _check_predict_args(args) -> str:
    """The head file, after the usage checks (argparse's exit code 2 for a wrong usage)."""
    p = args.parser
    if args.head_alias is not None:
        if args.head_file is not None:
            p.error("give the head file once: --head-file FILE (--head is its old name)")
        print("warning: predict --head is deprecated; use --head-file.", file=sys.stderr)
    head = args.head_file or args.head_alias
    if head is None:
        p.error("the following arguments are required: --head-file")
    if bool(args.images) == bool(args.data):
        p.error("give either image files or --data SPEC, not both (and not neither)")
    if args.cache and not args.data:
        p.error("--cache reads and fills the vectors of a --data set; it needs --data")
    if args.split and not args.data:
        p.error("--split selects a split of --data; it needs --data")
    if args.top < 1:
        p.error(f"--top must be >= 1, got {args.top}")
    return head


def _predict(args) -> int:
    from ..service import Predictor

    head = _check_predict_args(args)
    data = None
    if args.data:  # cheap checks (spec, split, files) before the column loads
        from ..extract import parse_dataset

        data = parse_dataset(args.data, split=args.split, **dataset_columns(args))
    pred = Predictor(
        head,
        column=args.column,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        load_column=args.cache is None,
    )
    if data is not None:
        from ..service import predict_dataset

        extract_options = {"device": args.device, "precision": args.precision}
        extract_options["backend"] = args.backend
        rows = predict_dataset(
            pred,
            data,
            top=args.top,
            batch_size=args.batch_size,
            cache=args.cache,
            extract_options=extract_options,
        )
    else:
        answers = pred.predict(args.images, top=args.top, batch_size=args.batch_size)
        rows = zip(args.images, answers)
    if args.out:
        return _to_csv(rows, args)
    if args.json:
        key = "id" if data is not None else "image"
        results = [{key: str(i), **r} for i, r in rows]
        print(json.dumps(results, indent=2))
        return 1 if data is not None and any("error" in r for r in results) else 0
    return _print(rows, errors_to_stderr=data is not None)


def _error(id_, reason) -> None:
    print(f"error: {printable_name(id_)}: {printable_name(reason)}", file=sys.stderr)


def _to_csv(rows, args) -> int:
    from ..service import write_csv

    written, failed = write_csv(rows, args.out, top=args.top, on_error=_error)
    print(f"wrote {written} predictions to {args.out}", file=sys.stderr)
    if failed:
        print(f"error: {failed} images could not be labelled (listed above).", file=sys.stderr)
    return 1 if failed else 0


def _print(rows, *, errors_to_stderr: bool) -> int:
    """One line per image; image files keep their old output (errors inline, exit 1 if all)."""
    n = bad = 0
    for image, r in rows:
        n += 1
        if "error" in r:
            bad += 1
            if errors_to_stderr:
                _error(image, r["error"])
            else:
                print(f"{printable_name(image)}\terror: {printable_name(r['error'])}")
            continue
        alts = ", ".join(
            f"{printable_name(t['label'])} {t['probability']:.2f}" for t in r["top"][1:]
        )
        print(
            f"{printable_name(image)}\t{printable_name(r['label'])}\t{r['probability']:.3f}"
            + (f"\t({alts})" if alts else "")
        )
    if errors_to_stderr:
        return 1 if bad else 0
    return 1 if bad == n else 0


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", help="HTTP API: embed and classify images (colhead[serve])")
    p.add_argument("--column", default=DEFAULT_COLUMN, help="the column to serve")
    p.add_argument("--heads", default=None, help="folder of saved heads (*.npz)")
    p.add_argument("--host", default="127.0.0.1", help="non-loopback needs a token or flag")
    p.add_argument("--port", type=int, default=8000)
    add_device_args(p)
    add_backend_arg(p)
    p.add_argument("--max-batch", type=int, default=32, help="most images per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch")
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    p.add_argument("--max-images", type=int, default=64, help="most images per request")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body")
    p.add_argument(
        "--max-megapixels", type=float, default=512.0, help="most pixels per request, in millions"
    )
    p.add_argument("--max-queue", type=int, default=1024, help="most images waiting (then 503)")
    p.add_argument(
        "--request-timeout", type=float, default=60.0, help="seconds a request waits (then 504)"
    )
    p.add_argument("--cache-size", type=int, default=4096, help="vectors kept by content hash")
    p.add_argument("--allow-remote", action="store_true", help="listen beyond loopback, no token")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="another Host name a token-less loopback server answers (repeatable)",
    )
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    try:  # FastAPI and uvicorn are the optional extra colhead[serve]
        from ..service import create_app, run  # noqa: F401
    except ImportError as e:
        raise RuntimeError(str(e)) from None
    # run() refuses a non-loopback host without a token before the column loads.
    run(
        host=args.host,
        port=args.port,
        allow_remote=args.allow_remote,
        allow_hosts=args.allow_host,
        column=args.column,
        heads_dir=args.heads,
        device=args.device,
        precision=args.precision,
        backend=args.backend,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        batching=not args.no_batching,
        max_images=args.max_images,
        max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
        max_request_pixels=int(args.max_megapixels * 1e6),
        max_queue=args.max_queue,
        request_timeout_s=args.request_timeout,
        cache_size=args.cache_size,
    )
    return 0
