"""``colhead columns`` and ``colhead extract``."""

from __future__ import annotations

import json

from ._options import add_extract_args, dataset_columns
from ._text import printable


def add_parsers(sub) -> None:
    p = sub.add_parser("columns", help="list the columns and whether they work offline")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_columns)

    p = sub.add_parser("extract", help="run a column over a dataset into a feature cache")
    add_extract_args(p)
    p.add_argument("--no-draft", action="store_true", help="full JPEG decode, no DCT downscale")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-absolute", action="store_true", help="CSV may list any path")
    p.add_argument("--retry-skipped", action="store_true", help="retry items skipped before")
    p.add_argument("--engine", default="local", choices=["local", "ray"])
    p.add_argument(
        "--decode",
        default="auto",
        choices=["auto", "cpu", "gpu"],
        help="where JPEG batches are decoded and resized; auto: on the GPU when --device is "
        "CUDA (nvJPEG, other images on the CPU), never on a CPU device",
    )
    p.add_argument(
        "--compile", action="store_true", help="torch.compile the column (long GPU runs)"
    )
    p.add_argument("--ray-address", default=None, help="Ray cluster address (engine ray)")
    p.set_defaults(func=_extract)


def _columns(args) -> int:
    from ..extract import describe_columns

    rows = describe_columns()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    w = max([22] + [len(r["name"]) + 2 for r in rows])  # variants: efficientnet_lite0:stages
    print(f"{'column':<{w}}{'dim':>6}  {'offline':<8}source")
    for r in rows:
        print(
            f"{r['name']:<{w}}{r['dim'] or '?':>6}  {'yes' if r['offline'] else 'no':<8}"
            f"{r['source']}"
        )
    print(
        "\nVariants join with '+' after one ':', e.g. efficientnet_lite0:stages+full.\n"
        "Also: tv/NAME (any torchvision classifier) and timm/NAME (any timm model); these "
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
        backend=args.backend,
    )
    data = args.data
    if dataset_columns(args):  # --path-col ...: the spec string alone cannot carry them
        from ..extract import parse_dataset

        data = parse_dataset(
            data, split=args.split, allow_absolute=args.allow_absolute, **dataset_columns(args)
        )
    if args.engine == "ray":
        if args.decode != "auto" or args.compile:
            raise ValueError(
                "--decode and --compile apply to the local engine; drop them or use --engine local."
            )
        try:
            from ..extract import extract_ray
        except ImportError as e:
            raise ValueError(f"--engine ray is not available here ({e}).") from None
        result = extract_ray(args.column, data, ray_address=args.ray_address, **kwargs)
    else:
        from ..extract import extract

        result = extract(args.column, data, decode=args.decode, compile=args.compile, **kwargs)
    print(printable(result.summary()))
    if result.skipped_now:
        print(
            f"{result.skipped_now} items skipped; see them with: colhead cache info {result.path}"
        )
    return 0
