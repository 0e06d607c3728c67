"""Dynamic batching: one thread owns the column, concurrent requests share its forward passes.

As Triton and TorchServe do: up to ``max_batch`` images per pass, waiting at most
``max_wait_ms`` after the oldest one arrived. The queue is bounded (a full one is refused at
once, so overload answers 503 instead of growing memory and latency without end); a pass that
fails is retried image by image, so one bad image does not fail the other requests of its batch;
and a worker thread that dies fails every waiting request and says so in ``alive()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

log = logging.getLogger("colhead.serve")
_STOP = object()  # tells the batch worker to exit


class QueueFull(RuntimeError):
    """The batcher already holds as many images as it may queue; try again later."""


class BatcherStopped(RuntimeError):
    """The batcher's worker is not running (stopped for shutdown, or died)."""


class ForwardError(RuntimeError):
    """Some images of a job failed in the column; the others have their vectors.

    Attributes:
        vectors: (n, dim) float32, NaN rows where the image failed.
        errors: per row, None or the reason it failed.
    """

    def __init__(self, vectors: np.ndarray, errors: list[str | None]):
        bad = sum(e is not None for e in errors)
        super().__init__(f"{bad} of {len(errors)} images failed in the column: {errors}")
        self.vectors, self.errors = vectors, errors


@dataclass
class _Job:
    arrays: np.ndarray  # (n, H, W, 3) uint8, n <= max_batch
    future: Future
    enqueued: float


class Batcher:
    """One worker thread runs every forward pass; concurrent requests share them.

    Args:
        forward: uint8 (B, H, W, 3) -> float32 (B, dim), e.g. ``Embedder.forward``.
        max_batch: most images in one forward pass.
        max_wait_ms: longest the oldest queued image waits for company before its pass starts.
        batching: False runs each request's images as their own pass (the naive server the
            benchmark compares against); requests are still served one pass at a time.
        max_queue: most images waiting for a pass; ``submit`` raises ``QueueFull`` beyond it.

    The worker waits for company only while requests are announced with ``arriving()`` (the
    service announces each one while it decodes): with nothing on its way, waiting would add
    ``max_wait_ms`` to every request at low load and batch nothing.
    """

    def __init__(
        self,
        forward,
        *,
        max_batch: int = 32,
        max_wait_ms: float = 5.0,
        batching: bool = True,
        max_queue: int = 1024,
    ):
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batching = batching
        self.max_queue = max_queue
        self.forward_passes = 0
        self.images = 0
        self.largest_batch = 0
        self.retried_passes = 0  # failed passes retried image by image
        self.refused = 0  # images refused because the queue was full
        self.queued = 0  # images submitted and not yet taken by the worker
        self._arriving = 0
        self._lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._stopping = False
        self.death: str | None = None  # why the worker died, when it did

    def submit(self, arrays: np.ndarray) -> list[Future]:
        """Queue a request's images; one future per chunk of at most ``max_batch`` rows.

        Raises:
            QueueFull: the queue cannot take ``len(arrays)`` more images now.
            BatcherStopped: the worker is stopping or has died.
        """
        self._ensure_started()
        n = len(arrays)
        with self._lock:
            if self.death is not None or self._stopping:
                raise BatcherStopped(self._not_running())
            # An empty queue takes any request, so one larger than the bound still runs.
            if self.queued and self.queued + n > self.max_queue:
                self.refused += n
                raise QueueFull(
                    f"The server is busy: {self.queued} images are waiting for the column and "
                    f"this request adds {n}, over the queue limit of {self.max_queue}. Retry in "
                    "a moment."
                )
            self.queued += n
            now = time.monotonic()
            futures = []
            for s in range(0, n, self.max_batch):
                job = _Job(arrays[s : s + self.max_batch], Future(), now)
                self._queue.put(job)
                futures.append(job.future)
        return futures

    @contextmanager
    def arriving(self):
        """Announce a request whose images will be submitted inside this block."""
        with self._lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._lock:
                self._arriving -= 1

    def alive(self) -> bool:
        """False once the worker died or was stopped; True before its lazy start."""
        if self.death is not None or self._stopping:
            return False
        t = self._thread
        return t is None or t.is_alive()

    def stats(self) -> dict:
        return {
            "batching": self.batching,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000.0,
            "forward_passes": self.forward_passes,
            "images": self.images,
            "largest_batch": self.largest_batch,
            "queued": self.queued,
            "max_queue": self.max_queue,
            "refused": self.refused,
            "retried_passes": self.retried_passes,
        }

    def stop(self, timeout: float | None = None) -> None:
        """Finish the passes already queued, then end the worker.

        Args:
            timeout: longest wait for the queued passes; what is left then fails with
                ``BatcherStopped`` rather than waiting for ever.
        """
        with self._start_lock:
            with self._lock:  # a submit either queued before this or sees the flag
                self._stopping = True
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join(timeout)
                if not self._thread.is_alive():
                    self._thread = None
            self._fail_queued(BatcherStopped("The server is shutting down."))
            if self._thread is None:
                self._stopping = False  # an app served again restarts its worker

    def _not_running(self) -> str:
        if self.death is not None:
            return f"The column's worker thread died ({self.death}); restart the server."
        return "The server is shutting down; retry against a running one."

    def _ensure_started(self) -> None:
        # Started on first use rather than at construction, so an app that is built but never
        # served (or served, stopped and served again) holds no idle thread.
        if self._thread is None:
            with self._start_lock:
                if self._thread is None and not self._stopping:
                    self._thread = threading.Thread(
                        target=self._run, name="colhead-batcher", daemon=True
                    )
                    self._thread.start()

    def _take(self, job: _Job) -> None:
        with self._lock:
            self.queued -= len(job.arrays)

    def _fail_queued(self, error: BaseException) -> None:
        """Fail every job still queued (a dead or stopped worker will never run them)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not _STOP:
                self._take(job)
                if job.future.set_running_or_notify_cancel():
                    job.future.set_exception(error)

    def _gather(self, first: _Job) -> tuple[list[_Job], object]:
        """Jobs for one pass, starting with ``first``; also the job that did not fit, if any."""
        jobs, n = [first], len(first.arrays)
        if not self.batching:
            return jobs, None
        # The wait counts from when the oldest image was queued, not from now: after a long
        # pass, whatever queued meanwhile goes at once.
        deadline = first.enqueued + self.max_wait
        while n < self.max_batch:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self._arriving:
                    break
                try:  # short slices, to notice soon when nothing is on its way any more
                    job = self._queue.get(timeout=min(remaining, 0.001))
                except queue.Empty:
                    continue
            if job is _STOP or n + len(job.arrays) > self.max_batch:
                return jobs, job
            self._take(job)
            jobs.append(job)
            n += len(job.arrays)
        return jobs, None

    def _run(self) -> None:
        jobs: list[_Job] = []
        held = None
        try:
            while True:
                first = held if held is not None else self._queue.get()
                if first is _STOP:
                    return
                if held is None:
                    self._take(first)
                jobs, held = self._gather(first)
                if held is not None and held is not _STOP:
                    self._take(held)
                # A request whose client went away cancelled its future: skip its images.
                jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
                if jobs:
                    self._pass(jobs)
                jobs = []
        except BaseException as e:  # the worker is gone: nobody may wait for it any more
            self.death = f"{type(e).__name__}: {e}"[:300]
            dead = BatcherStopped(self._not_running())
            for j in jobs:
                if not j.future.done():
                    j.future.set_exception(dead)
            if isinstance(held, _Job) and held.future.set_running_or_notify_cancel():
                held.future.set_exception(dead)
            self._fail_queued(dead)
            log.critical("the column's worker thread died: %s", self.death, exc_info=True)

    def _pass(self, jobs: list[_Job]) -> None:
        """One forward pass over ``jobs``; on failure, each image again on its own."""
        batch = np.concatenate([j.arrays for j in jobs]) if len(jobs) > 1 else jobs[0].arrays
        try:
            out = self.forward(batch)
        except Exception:  # noqa: BLE001 - retried image by image below
            self.retried_passes += 1
            out, errors = self._one_by_one(batch)
        else:
            errors = [None] * len(batch)
        self.forward_passes += 1
        self.images += len(batch)
        self.largest_batch = max(self.largest_batch, len(batch))
        s = 0
        for j in jobs:
            e = s + len(j.arrays)
            if any(err is not None for err in errors[s:e]):
                j.future.set_exception(ForwardError(out[s:e], errors[s:e]))
            else:
                j.future.set_result(out[s:e])
            s = e

    def _one_by_one(self, batch: np.ndarray) -> tuple[np.ndarray, list[str | None]]:
        rows: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for i in range(len(batch)):
            try:
                rows.append(np.asarray(self.forward(batch[i : i + 1]), np.float32)[0])
                errors.append(None)
            except Exception as e:  # noqa: BLE001 - this image's answer is its error
                rows.append(None)
                errors.append(f"the column failed on this image: {type(e).__name__}: {e}"[:300])
        dim = next((len(r) for r in rows if r is not None), 0)
        out = np.full((len(batch), dim), np.nan, np.float32)
        for i, r in enumerate(rows):
            if r is not None:
                out[i] = r
        return out, errors
