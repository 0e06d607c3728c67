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


def add_backend_arg(p: argparse.ArgumentParser) -> None:
    """--backend, for every command that runs a column (extract, predict, serve, compare)."""
    p.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "torch", "openvino"],
        help="the column's engine on the CPU; auto: OpenVINO where installed, else torch",
    )


def add_extract_args(p: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    p.add_argument("--column", default=DEFAULT_COLUMN, help="column name (colhead columns)")
    add_data_args(p, data_required=data_required)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--out", default=None, help="cache file to write")
    g.add_argument("--cache-dir", default=None, help="folder of caches (env COLHEAD_CACHE)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="image decode workers (default: 2 on the CPU, fewer with fewer cores; on CUDA all "
        "cores but one, 2..16)",
    )
    add_device_args(p)
    add_backend_arg(p)
    p.add_argument("--store-dtype", default="float32", choices=["float32", "float16"])
    p.add_argument("--weights", default=None, help="local weights file for the column")


def add_data_args(p: argparse.ArgumentParser, *, data_required: bool = True) -> None:
    """--data, --split and the data column options, as extract and predict take them."""
    p.add_argument("--data", required=data_required, help="dataset spec, e.g. folder:PATH, elpv")
    p.add_argument("--split", default=None, help="dataset split (train/val/test/all)")
    c = p.add_argument_group("data columns (csv:, parquet:, hf:)")
    c.add_argument("--path-col", default=None, help="CSV column of image paths (default path)")
    c.add_argument("--label-col", default=None, help="column of labels (default label)")
    c.add_argument("--split-col", default=None, help="CSV column of split names (for --split)")
    c.add_argument("--image-col", default=None, help="parquet/arrow column of image bytes")


def dataset_columns(args: argparse.Namespace) -> dict:
    """The data column options given on the command line (for ``parse_dataset``)."""
    names = ("path_col", "label_col", "split_col", "image_col")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
