"""Options shared by several commands, declared once so they mean the same everywhere."""

from __future__ import annotations

import argparse

from .._device import DEVICES_HELP, PRECISIONS

DEFAULT_COLUMN = "efficientnet_lite0"  # the offline default (colhead columns lists the others)


def add_device_args(p: argparse.ArgumentParser) -> None:
    """--device and --precision, as every command that runs a model takes them."""
    p.add_argument("--device", default="auto", help=DEVICES_HELP)
    p.add_argument(
        "--precision",
        default="auto",
        choices=list(PRECISIONS),
        help="auto: bf16 on CPUs with native bf16 and on CUDA, else fp32",
    )


def add_extract_args(p: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    p.add_argument("--column", default=DEFAULT_COLUMN, help="column name (colhead columns)")
    p.add_argument("--data", required=data_required, help="dataset spec, e.g. folder:PATH, elpv")
    p.add_argument("--split", default=None, help="dataset split (train/val/test/all)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", default=None, help="cache file to write")
    g.add_argument("--cache-dir", default=None, help="folder of caches (env COLHEAD_CACHE)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=None, help="decode workers (default 2)")
    add_device_args(p)
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--weights", default=None, help="local weights file for the column")
