"""The ``colhead`` command line: thin adapters over the library.

One module per group of commands (``_extract``, ``_cache``, ``_heads``, ``_service``), each with
``add_parsers(sub)`` that sets ``func`` on its parsers; options shared by several commands live
in ``_options``. ``main(argv) -> int`` is the one place that turns expected errors into
``error: ...`` on stderr and exit code 1; argparse's own usage errors keep exit code 2.
"""

from __future__ import annotations

import argparse
import sys

from . import _cache, _extract, _heads, _service


def _parser() -> argparse.ArgumentParser:
    from .._version import __version__

    ap = argparse.ArgumentParser(
        prog="colhead",
        description="Reuse pretrained vision columns: extract features once, train heads fast.",
    )
    ap.add_argument("--version", action="version", version=f"colhead {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in (_extract, _cache, _heads, _service):
        group.add_parsers(sub)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from ..cache import CacheError, CacheLockedError, CacheMismatchError
    from ..extract import BadImage, ColumnUnavailableError

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
        return args.func(args)
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
