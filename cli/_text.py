"""Text that is safe to print: names from files and data sets never drive the terminal."""

from __future__ import annotations

import re

# C0 and C1 control characters and DEL, except tab and newline, which structure our own output.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``), so a file name cannot inject
    terminal escape sequences; everything else, non-ASCII letters included, is kept."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", str(text))


def printable_name(text: object) -> str:
    """Like :func:`printable`, for one name on one line: tab and newline escaped too."""
    return printable(text).replace("\t", "\\t").replace("\n", "\\n")
