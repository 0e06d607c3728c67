"""Fixtures of the fault-injection suite: the fork server, reference caches, the counts.

``--fault-count N`` (or ``COLHEAD_FAULT_COUNT=N``) sets how many kill points and corrupt files
the default tests try (5 and 20 by default); the ``slow`` tests always try at least the full
counts of issue 7. The option is registered here, so pass it with this folder on the command
line (``pytest tests/faults --fault-count 20``); the environment variable works from anywhere.
"""

from __future__ import annotations

import os

import pytest

from ._procs import FIGURES, Zygote, extract_argv

FULL_KILLS = 20  # issue 7: kill -9 at 20 random moments
FULL_CORRUPT = 60


def pytest_addoption(parser):
    parser.addoption(
        "--fault-count",
        type=int,
        default=None,
        help="kill points / corrupt variants per fault test (default 5 / 20; env "
        "COLHEAD_FAULT_COUNT)",
    )


def _count(config, default: int) -> int:
    try:
        opt = config.getoption("--fault-count")
    except ValueError:  # this conftest was not loaded at start-up: no option
        opt = None
    env = os.environ.get("COLHEAD_FAULT_COUNT")
    return opt if opt is not None else int(env) if env else default


@pytest.fixture(scope="session")
def fault_count(request) -> int:
    """Kill points per kill test."""
    return _count(request.config, 5)


@pytest.fixture(scope="session")
def corrupt_count(request) -> int:
    """Corrupt variants per corruption test."""
    return _count(request.config, 20)


@pytest.fixture(scope="session")
def zygote(tmp_path_factory):
    z = Zygote(tmp_path_factory.mktemp("zygote"))
    yield z
    z.close()


@pytest.fixture(scope="session")
def digits_ref(zygote, tmp_path_factory):
    """An uninterrupted extraction of digits:test (450 rows, batches of 4), and its duration."""
    out = tmp_path_factory.mktemp("ref") / "digits.h5"
    r = zygote.run(extract_argv(out, batch_size=4, extra=["--split", "test"]))
    assert r.rc == 0, r.describe()
    from colhead.cache import open_cache

    return out, open_cache(out), r.seconds


def pytest_terminal_summary(terminalreporter):
    if not FIGURES:
        return
    tr = terminalreporter
    tr.section("fault-injection figures (issue 7)")
    width = max(len(k) for k in FIGURES)
    for key in FIGURES:
        tr.write_line(f"{key:<{width}}  {FIGURES[key]:>6}")
