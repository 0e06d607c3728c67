"""What a run did (``ExtractResult``) and where caches go by default (``default_cache_dir``)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ExtractResult:
    """What one extraction run did."""

    path: str
    rows: int  # live rows in the cache after this run
    written: int
    reused: int
    skipped: int  # items skipped in total (this run and earlier ones)
    skipped_now: int
    retired: int  # rows dropped because their file changed or disappeared
    seconds: float
    read_s: float
    column_s: float
    write_s: float
    device: str
    precision: str
    backend: str = "torch"
    threads: int | None = None  # the column's CPU threads as chosen (tuner or OpenVINO)
    workers: int | None = None  # decode workers

    @property
    def images_per_s(self) -> float:
        return (self.written + self.skipped_now) / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.path}: {self.written} rows written, {self.reused} reused, {self.skipped_now} "
            f"skipped now ({self.skipped} in all), {self.retired} retired; {self.rows} rows in "
            f"the cache. {self.seconds:.1f} s ({self.images_per_s:.1f} img/s on {self.device}, "
            f"{self.backend} {self.precision}{self._cores()}): reading {self.read_s:.1f} s, "
            f"column {self.column_s:.1f} s, "
            f"writing {self.write_s:.1f} s."
        )

    def _cores(self) -> str:
        if self.threads is None:
            return ""
        return f", {self.threads} column threads + {self.workers or 0} decode workers"


def default_cache_dir() -> Path:
    env = os.environ.get("COLHEAD_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "colhead"
