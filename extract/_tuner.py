"""The thread tuner: the column's torch thread count, chosen by measuring it while it runs."""

from __future__ import annotations

import contextlib
import statistics


class ThreadTuner:
    """Choose the column's torch thread count by measuring it, and keep measuring.

    On shared cores (decode workers, other jobs) an OpenMP forward with as many threads as
    cores stalls at every layer's barrier whenever one of its threads is preempted, and fewer
    threads win; on idle cores more threads win. Each option is tried (its first slice is warm-up
    and not counted), then the fastest per image (median of its last three slices) is used. The
    other option is tried again after ``every`` slices, since the load on the cores changes;
    while it keeps losing, the wait doubles (up to ``max_every``), so a collapsed option costs
    little. The vectors do not depend on the thread count (checked for the CPU kernels colhead
    uses), only the speed does.
    """

    def __init__(self, options, *, every: int = 16, probes: int = 1, max_every: int = 256):
        self.options = sorted(set(int(o) for o in options if o >= 1))
        self.every, self.probes, self.max_every = every, probes, max_every
        self.spi: dict[int, list[float]] = {o: [] for o in self.options}  # s/image, last 3
        self.seen = {o: 0 for o in self.options}
        self.last = {o: -1 for o in self.options}
        self.calls = 0
        self.gap = every
        self.next_check: int | None = None
        self.checking: int | None = None
        self.current = self.options[0]

    def best(self) -> int:
        # the median of the last three: one slice hit by a preemption does not decide
        return min(self.options, key=lambda o: statistics.median(self.spi[o] or [float("inf")]))

    def choose(self) -> int:
        self.calls += 1
        for o in self.options:  # explore: warm-up plus ``probes`` measured slices each
            if self.seen[o] < self.probes + 1:
                return o
        if self.next_check is None:
            self.next_check = self.calls + self.gap
        if self.calls >= self.next_check and len(self.options) > 1:
            self.checking = min(self.options, key=lambda o: self.last[o])  # measured longest ago
            return self.checking
        return self.best()

    @contextlib.contextmanager
    def threads(self):
        """Run the block with the chosen thread count, then give the caller's back."""
        import torch

        self.current = self.choose()
        before = torch.get_num_threads()
        torch.set_num_threads(self.current)
        try:
            yield
        finally:
            torch.set_num_threads(before)

    def record(self, seconds: float, n: int) -> None:
        o = self.current
        self.seen[o] += 1
        self.last[o] = self.calls
        if self.seen[o] > 1 and n > 0:  # the first slice on a thread count is warm-up
            self.spi[o] = self.spi[o][-2:] + [seconds / n]
        if o == self.checking:  # a re-check: back off while the re-checked option keeps losing
            self.checking = None
            self.gap = self.every if self.best() == o else min(2 * self.gap, self.max_every)
            self.next_check = self.calls + self.gap
