"""The ``colhead`` command line: thin adapters over the library.

One module per group of commands (``_extract``, ``_cache``, ``_heads``, ``_service``), each with
``add_parsers(sub)`` that sets ``func`` on its parsers; options shared by several commands live
in ``_options``. ``main(argv) -> int`` is the one place that turns expected errors into
``error: ...`` on stderr and exit code 1; argparse's own usage errors keep exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import _cache, _extract, _heads, _service
from ._text import printable, printable_name

__all__ = ["main", "printable", "printable_name"]

# Environment variables that keep Hugging Face from the network. huggingface_hub reads them once,
# at import, so they must be set before anything imports it (timm does); then a `timm/...` column
# without cached weights fails at once instead of after ~50 s of retries (issue 12).
HF_OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def offline_env() -> None:
    """With ``COLHEAD_OFFLINE`` set (not "0"), make every Hugging Face library offline too."""
    if os.environ.get("COLHEAD_OFFLINE", "") not in ("", "0"):
        for k, v in HF_OFFLINE_ENV.items():
            os.environ.setdefault(k, v)


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help line ends with its default, unless the help already says it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        quiet = default is None or default is False or default == argparse.SUPPRESS
        if quiet or "default" in text or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)".lstrip()


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose sub-commands (made with ``type(self)``) share the formatter, and
    whose ``--json`` options say what they do when their command does not."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)

    def add_argument(self, *args, **kwargs):
        if "--json" in args and not kwargs.get("help"):
            kwargs["help"] = "print machine-readable JSON instead of text"
        elif not kwargs.get("help") and str(args[0]).startswith("-"):
            kwargs["help"] = "(default: %(default)s)"  # argparse hides options without help
        return super().add_argument(*args, **kwargs)


def _parser() -> argparse.ArgumentParser:
    from .._version import __version__

    ap = _Parser(
        prog="colhead",
        description="Reuse pretrained vision columns: extract features once, train heads fast.",
    )
    ap.add_argument("--version", action="version", version=f"colhead {__version__}")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    for group in (_extract, _cache, _heads, _service):
        group.add_parsers(sub)
    return ap


def _quiet_broken_pipe() -> int:
    """The reader went away (``colhead ... | head -1``): stop quietly, as `cat` would.

    Point stdout at /dev/null so that the interpreter's final flush does not fail again
    (the recipe of the Python docs, "Note on SIGPIPE").
    """
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # stdout without a descriptor (in tests)
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    offline_env()
    args = _parser().parse_args(argv)
    from ..cache import CacheError, CacheLockedError, CacheMismatchError
    from ..extract import BadImage, ColumnUnavailableError

    expected = (
        ValueError,
        FileNotFoundError,
        FileExistsError,
        PermissionError,
        IsADirectoryError,
        CacheError,
        CacheLockedError,
        CacheMismatchError,
        ColumnUnavailableError,
        BadImage,
        ConnectionError,  # --engine ray --ray-address to a cluster that is not there
        ImportError,  # an optional dependency a data source needs (parquet: without pyarrow)
    )
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler, not at exit
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every batch committed so far is kept; rerun the same command to "
            "resume.",
            file=sys.stderr,
        )
        return 130
    except expected as e:
        print(f"error: {printable(e)}", file=sys.stderr)
        return 1
    except RuntimeError as e:  # e.g. CUDA asked for but absent: say it, without a traceback
        print(f"error: {printable(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
