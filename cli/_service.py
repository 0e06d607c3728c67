"""``colhead predict`` and ``colhead serve``: the long-lived and one-shot uses of a head."""

from __future__ import annotations

import json

from ._options import DEFAULT_COLUMN, add_device_args


def add_parsers(sub) -> None:
    p = sub.add_parser("predict", help="label new images with a saved head and its column")
    p.add_argument("--head", required=True, help="a head file (.npz) from heads --save")
    p.add_argument("--column", default=None, help="must be the head's column (default: it)")
    add_device_args(p)
    p.add_argument("--top", type=int, default=3)
    p.add_argument("--json", action="store_true")
    p.add_argument("images", nargs="+")
    p.set_defaults(func=_predict)
    _add_serve_parser(sub)


def _predict(args) -> int:
    from ..service import Predictor

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
    p.add_argument("--column", default=DEFAULT_COLUMN, help="the column to serve")
    p.add_argument("--heads", default=None, help="folder of saved heads (*.npz)")
    p.add_argument("--host", default="127.0.0.1", help="non-loopback needs a token or flag")
    p.add_argument("--port", type=int, default=8000)
    add_device_args(p)
    p.add_argument("--max-batch", type=int, default=32, help="most images per forward pass")
    p.add_argument("--max-wait-ms", type=float, default=5.0, help="longest wait to fill a batch")
    p.add_argument("--no-batching", action="store_true", help="one forward pass per request")
    p.add_argument("--max-images", type=int, default=64, help="most images per request")
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="largest request body")
    p.add_argument("--cache-size", type=int, default=4096, help="vectors kept by content hash")
    p.add_argument("--allow-remote", action="store_true", help="listen beyond loopback, no token")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    try:
        from ..service import run
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
