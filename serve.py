"""``colhead serve``: one process holds a column in memory and answers HTTP requests.

Endpoints (FastAPI, OpenAPI page at ``/docs``):

    GET  /healthz                  liveness plus the batching and cache counters
    GET  /v1/stats                 the counters alone
    GET  /v1/columns               the registry, and which column is served with its identity
    GET  /v1/heads                 saved heads in the heads folder: their column, loaded or why not
    POST /v1/embed                 images (multipart field ``files``) -> vectors
    POST /v1/predict?head=NAME     images -> label, probability and top-k per image

Requests are decoded and preprocessed in the threadpool, then one worker thread owns the
column and gathers the images of concurrent requests into one forward pass (dynamic batching,
as Triton and TorchServe do: up to ``max_batch`` images, waiting at most ``max_wait_ms`` after
the oldest one arrived). Vectors are also kept in an LRU cache keyed by the sha256 of the
uploaded bytes, so a repeated image costs a hash, not a forward pass.
"""

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import os
import queue
import threading
import time
from collections import OrderedDict
from concurrent.futures import Future
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import numpy as np

try:
    from fastapi import Depends, FastAPI, File, HTTPException, Query, UploadFile
    from fastapi.responses import JSONResponse
    from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
    from starlette.concurrency import run_in_threadpool
except ImportError as e:  # the service is an optional extra
    raise ImportError(
        f"colhead serve needs FastAPI and uvicorn ({e}); install them with "
        "`pip install 'colhead[serve]'`."
    ) from e

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# run time, and those of closures (``Depends(bearer)``) name local variables.

log = logging.getLogger("colhead.serve")

MiB = 1 << 20
_STOP = object()  # tells the batch worker to exit


# --- dynamic batching ---------------------------------------------------------------------------
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

    The worker waits for company only while requests are announced with ``arriving()`` (the
    service announces each one while it decodes): with nothing on its way, waiting would add
    ``max_wait_ms`` to every request at low load and batch nothing.
    """

    def __init__(self, forward, *, max_batch: int = 32, max_wait_ms: float = 5.0, batching=True):
        self.forward = forward
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000.0
        self.batching = batching
        self.forward_passes = 0
        self.images = 0
        self.largest_batch = 0
        self._arriving = 0
        self._arriving_lock = threading.Lock()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, arrays: np.ndarray) -> list[Future]:
        """Queue a request's images; one future per chunk of at most ``max_batch`` rows."""
        self._ensure_started()
        now = time.monotonic()
        futures = []
        for s in range(0, len(arrays), self.max_batch):
            job = _Job(arrays[s : s + self.max_batch], Future(), now)
            self._queue.put(job)
            futures.append(job.future)
        return futures

    @contextmanager
    def arriving(self):
        """Announce a request whose images will be submitted inside this block."""
        with self._arriving_lock:
            self._arriving += 1
        try:
            yield
        finally:
            with self._arriving_lock:
                self._arriving -= 1

    def stats(self) -> dict:
        return {
            "batching": self.batching,
            "max_batch": self.max_batch,
            "max_wait_ms": self.max_wait * 1000.0,
            "forward_passes": self.forward_passes,
            "images": self.images,
            "largest_batch": self.largest_batch,
        }

    def stop(self) -> None:
        with self._start_lock:
            if self._thread is not None:
                self._queue.put(_STOP)
                self._thread.join()
                self._thread = None

    def _ensure_started(self) -> None:
        # Started on first use rather than at construction, so an app that is built but never
        # served (or served, stopped and served again) holds no idle thread.
        if self._thread is None:
            with self._start_lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._run, name="colhead-batcher", daemon=True
                    )
                    self._thread.start()

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
            jobs.append(job)
            n += len(job.arrays)
        return jobs, None

    def _run(self) -> None:
        held = None
        while True:
            first = held if held is not None else self._queue.get()
            if first is _STOP:
                return
            jobs, held = self._gather(first)
            # A request whose client went away cancelled its future: skip its images.
            jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not jobs:
                continue
            batch = np.concatenate([j.arrays for j in jobs]) if len(jobs) > 1 else jobs[0].arrays
            try:
                out = self.forward(batch)
            except Exception as e:  # noqa: BLE001 - handed to the waiting requests
                for j in jobs:
                    j.future.set_exception(e)
                continue
            self.forward_passes += 1
            self.images += len(batch)
            self.largest_batch = max(self.largest_batch, len(batch))
            s = 0
            for j in jobs:
                j.future.set_result(out[s : s + len(j.arrays)])
                s += len(j.arrays)


class _LRU:
    """sha256 of an upload -> its vector, least recently used evicted first."""

    def __init__(self, size: int):
        self.size = size
        self.hits = 0
        self.misses = 0
        self._d: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            v = self._d.get(key)
            if v is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
            return v

    def put(self, key: str, value: np.ndarray) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.size:
                self._d.popitem(last=False)

    def stats(self) -> dict:
        return {
            "size": len(self._d),
            "capacity": self.size,
            "hits": self.hits,
            "misses": self.misses,
        }


# --- heads ---------------------------------------------------------------------------------------
@dataclass
class _Head:
    name: str
    path: Path
    column: str | None
    predictor: object | None = None  # colhead.predict.Predictor when usable
    reason: str | None = None  # why it is not loaded

    def describe(self) -> dict:
        p = self.predictor
        return {
            "name": self.name,
            "file": self.path.name,
            "column": self.column,
            "loaded": p is not None,
            "reason": self.reason,
            "kind": type(p.head).__name__ if p is not None else None,
            "labels": list(p.labels) if p is not None else None,
        }


def _load_heads(heads_dir: Path | None, embedder) -> dict[str, _Head]:
    """Every ``*.npz`` in ``heads_dir``: loaded when it fits the served column, else why not."""
    from .heads import load_head
    from .predict import HeadColumnMismatch, Predictor

    heads: dict[str, _Head] = {}
    if heads_dir is None:
        return heads
    for path in sorted(heads_dir.glob("*.npz")):
        entry = _Head(path.stem, path, None)
        try:
            entry.column = load_head(path)[1].get("column")
            entry.predictor = Predictor(path, embedder=embedder)
            log.info("head %r loaded from %s (column %s)", entry.name, path, entry.column)
        except HeadColumnMismatch as e:
            entry.reason = str(e)
            log.warning("head %r NOT loaded: %s", entry.name, e)
        except (ValueError, OSError) as e:  # load_head's messages name the file and the fault
            entry.reason = str(e)
            log.warning("head %r NOT loaded: %s", entry.name, entry.reason)
        heads[entry.name] = entry
    return heads


# --- request limits and auth -------------------------------------------------------------------
class _BodyLimit:
    """ASGI middleware: answer 413 when a request body exceeds ``max_bytes``.

    A declared Content-Length over the limit is refused before any byte is read (curl and
    other clients that send ``Expect: 100-continue`` then never upload it); a body without one
    is counted as it streams in.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    def _message(self) -> str:
        return (
            f"The request body is larger than the server's limit of {self.max_bytes} bytes "
            f"({self.max_bytes / MiB:.1f} MiB); send fewer or smaller images per request."
        )

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse({"detail": self._message()}, 413)(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                # Raised inside the endpoint's body parsing, which FastAPI re-raises as is.
                raise HTTPException(413, self._message())
            return message

        return await self.app(scope, counted, send)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_bind(host: str, token: str | None, allow_remote: bool) -> None:
    """Refuse an unauthenticated server on a non-loopback address unless asked explicitly."""
    if token or allow_remote or _is_loopback(host):
        return
    raise ValueError(
        f"Refusing to listen on {host} without a token: anyone who can reach this machine could "
        "use the service. Set COLHEAD_TOKEN (clients then send 'Authorization: Bearer TOKEN'), "
        "bind to 127.0.0.1, or pass --allow-remote to serve an open API on purpose."
    )


# --- the app -------------------------------------------------------------------------------------
def create_app(
    column: str = "efficientnet_lite0",
    heads_dir: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    batching: bool = True,
    max_upload_bytes: int = 20 * MiB,
    max_images: int = 64,
    token: str | None = None,
    cache_size: int = 4096,
) -> FastAPI:
    """Load ``column`` (and the heads in ``heads_dir`` that fit it) behind a FastAPI app.

    Args:
        column: the served column (see ``colhead columns``).
        heads_dir: folder of saved heads (``*.npz``); heads of another column are not loaded.
        device: "auto" | "cpu" | "cuda".
        precision: "auto" | "fp32" | "bf16" | "fp16".
        max_batch: most images in one forward pass.
        max_wait_ms: longest an image waits for others to share its forward pass.
        batching: False gives each request its own forward pass (for comparison).
        max_upload_bytes: largest request body; larger ones get 413.
        max_images: most images in one request; more get 413.
        token: bearer token the /v1 endpoints require (default: ``$COLHEAD_TOKEN``; none
            when unset or empty).
        cache_size: vectors kept in the content-hash LRU cache (0 disables it).

    Returns:
        The app; serve it with uvicorn (``run`` does).
    """
    from .extract import BadImage, Embedder, get_column

    # Cheap checks first, before the column loads.
    for name, value, low in (
        ("max_batch", max_batch, 1),
        ("max_images", max_images, 1),
        ("max_upload_bytes", max_upload_bytes, 1),
        ("cache_size", cache_size, 0),
    ):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
    if max_wait_ms < 0:
        raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}.")
    heads_path = Path(heads_dir) if heads_dir is not None else None
    if heads_path is not None and not heads_path.is_dir():
        raise FileNotFoundError(f"The heads folder {heads_path} does not exist.")
    get_column(column)
    if token is None:
        token = os.environ.get("COLHEAD_TOKEN")
    token = token or None  # an empty token means none, not "send an empty one"

    t0 = time.perf_counter()
    embedder = Embedder(column, device=device, precision=precision)
    log.info(
        "column %s loaded in %.1f s on %s (%s, dim %d)",
        column,
        time.perf_counter() - t0,
        embedder.device,
        embedder.precision,
        embedder.dim,
    )
    heads = _load_heads(heads_path, embedder)
    batcher = Batcher(
        embedder.forward, max_batch=max_batch, max_wait_ms=max_wait_ms, batching=batching
    )
    cache = _LRU(cache_size)
    served = {
        **embedder.identity,
        "name": embedder.spec.name,
        "dim": embedder.dim,
        "column_key": embedder.column_key,
        "device": str(embedder.device),
        "weights_id": embedder.spec.weights_id,
        "source": embedder.spec.source,
        "licence": embedder.spec.licence,
    }

    @asynccontextmanager
    async def lifespan(app):
        yield
        batcher.stop()  # let the worker thread finish its pass and exit with the server

    app = FastAPI(
        title="colhead",
        summary="Embed and classify images with a pretrained column and saved heads.",
        version=_version(),
        lifespan=lifespan,
    )
    app.add_middleware(_BodyLimit, max_bytes=max_upload_bytes)
    app.state.embedder, app.state.batcher, app.state.cache = embedder, batcher, cache
    app.state.heads = heads

    bearer = HTTPBearer(auto_error=False, description="Needed when the server has a token.")

    def authorise(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]):
        if token is None:
            return
        # compare_digest: the time taken must not tell how much of a guess was right
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token.encode()):
            raise HTTPException(
                401,
                "This server needs a bearer token: send 'Authorization: Bearer TOKEN' with the "
                "token it was started with (COLHEAD_TOKEN)."
                if creds is None
                else "The bearer token is wrong.",
                headers={"WWW-Authenticate": "Bearer"},
            )

    auth = [Depends(authorise)]

    def stats() -> dict:
        return {**batcher.stats(), "cache": cache.stats()}

    async def vectors(files: list[UploadFile]) -> list[dict]:
        """Per upload: ``{"filename", "sha256", "vector", "cached"}`` or ``{..., "error"}``."""
        if len(files) > max_images:
            raise HTTPException(
                413,
                f"This request has {len(files)} images; the limit is {max_images} per request. "
                "Split them over several requests.",
            )
        datas = [await f.read() for f in files]

        def prepare():  # hashing and decoding stay off the event loop
            out = []
            for f, data in zip(files, datas):
                item = {"filename": f.filename, "sha256": hashlib.sha256(data).hexdigest()}
                hit = cache.get(item["sha256"])
                if hit is not None:
                    item.update(vector=hit, cached=True)
                else:
                    try:
                        item.update(array=embedder.preprocess(data), cached=False)
                    except BadImage as e:
                        item["error"] = str(e)
                out.append(item)
            return out

        with batcher.arriving():
            items = await run_in_threadpool(prepare)
            todo = [it for it in items if "array" in it]
            futures = batcher.submit(np.stack([it.pop("array") for it in todo])) if todo else []
        if todo:
            rows = np.concatenate([await asyncio.wrap_future(f) for f in futures])
            for it, row in zip(todo, rows):
                it["vector"] = row
                cache.put(it["sha256"], row.copy())  # a copy: keep no batch alive
        return items

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict:
        """Liveness, the served column and the batching/cache counters."""
        return {
            "status": "ok",
            "column": embedder.spec.name,
            "device": str(embedder.device),
            "precision": embedder.precision,
            "stats": stats(),
        }

    @app.get("/v1/stats", tags=["service"], dependencies=auth)
    def get_stats() -> dict:
        """Forward passes, images through the column, largest batch, cache hits and misses."""
        return stats()

    @app.get("/v1/columns", tags=["columns"], dependencies=auth)
    def columns() -> dict:
        """The column registry (name, dim, offline availability) and the one served here."""
        from .extract import describe_columns

        rows = [{**r, "served": r["name"] == embedder.spec.name} for r in describe_columns()]
        return {"served": served, "columns": rows}

    @app.get("/v1/heads", tags=["heads"], dependencies=auth)
    def list_heads() -> dict:
        """Saved heads in the heads folder, the column each needs and whether it is loaded."""
        return {"column": embedder.spec.name, "heads": [h.describe() for h in heads.values()]}

    @app.post("/v1/embed", tags=["columns"], dependencies=auth)
    async def embed(
        files: Annotated[list[UploadFile], File(description="One or more image files.")],
    ) -> JSONResponse:
        """Images -> vectors of the served column; a broken image gets ``error`` instead."""
        results = []
        for it in await vectors(files):
            if "vector" in it:
                it["vector"] = it["vector"].tolist()
            results.append(it)
        return JSONResponse({"column": served, "results": results})

    @app.post("/v1/predict", tags=["heads"], dependencies=auth)
    async def predict(
        files: Annotated[list[UploadFile], File(description="One or more image files.")],
        head: Annotated[str, Query(description="Name of a loaded head (see /v1/heads).")],
        top: Annotated[int, Query(ge=1, le=100, description="How many labels to rank.")] = 5,
    ) -> JSONResponse:
        """Images -> label, probability and the top-k labels per image, with a saved head."""
        entry = heads.get(head)
        if entry is None:
            loaded = sorted(h.name for h in heads.values() if h.predictor is not None)
            raise HTTPException(
                404,
                f"No head named {head!r}. Loaded heads: {', '.join(loaded) or 'none'}"
                + ("" if heads_path else " (the server was started without --heads)")
                + ". See GET /v1/heads.",
            )
        if entry.predictor is None:
            raise HTTPException(409, f"The head {head!r} is not loaded: {entry.reason}")
        items = await vectors(files)
        ok = [it for it in items if "vector" in it]
        if ok:
            feats = np.stack([it.pop("vector") for it in ok])
            answers = await run_in_threadpool(entry.predictor.predict_features, feats, top=top)
            for it, answer in zip(ok, answers):
                it.update(answer)
        return JSONResponse({"head": head, "column": embedder.spec.name, "results": items})

    return app


def _version() -> str:
    from ._version import __version__

    return __version__


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allow_remote: bool = False,
    log_level: str = "info",
    **kw,
) -> None:
    """Build the app (``create_app(**kw)``) and serve it with uvicorn until interrupted.

    Args:
        host: address to bind; anything but loopback needs a token or ``allow_remote``.
        port: TCP port.
        allow_remote: serve without a token on a non-loopback address.
        log_level: uvicorn's log level.
        **kw: ``create_app`` arguments.
    """
    import uvicorn

    token = kw.get("token")
    check_bind(host, os.environ.get("COLHEAD_TOKEN") if token is None else token, allow_remote)
    if not log.handlers:  # uvicorn configures only its own loggers; show ours the same way
        from uvicorn.logging import DefaultFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s colhead: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    app = create_app(**kw)
    uvicorn.run(app, host=host, port=port, log_level=log_level)
