"""``colhead serve``'s HTTP app: one process holds a column and answers requests.

Endpoints (FastAPI, OpenAPI page at ``/docs``):

    GET  /healthz                  liveness (503 when the column's worker died) and counters
    GET  /v1/stats                 the counters alone
    GET  /v1/columns               the registry, and which column is served with its identity
    GET  /v1/heads                 saved heads in the heads folder: their column, loaded or why not
    POST /v1/embed                 images (multipart field ``files``) -> vectors
    POST /v1/predict?head=NAME     images -> label, probability and top-k per image

Requests are decoded and preprocessed in the threadpool, then the ``Batcher``'s one worker
thread runs the column over the images of concurrent requests together. Vectors are also kept
in an LRU cache keyed by the sha256 of the uploaded bytes, so a repeated image costs a hash, not
a forward pass. The routes are thin: the work is in ``_requests.Service``.
"""

import hmac
import logging
import os
import time
from contextlib import asynccontextmanager
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

from ._batcher import Batcher
from ._limits import LOOPBACK_NAMES, BodyLimit, HostAllowlist, MiB, check_options
from ._requests import Service

# No ``from __future__ import annotations`` here: FastAPI reads the endpoints' annotations at
# run time, and those of closures (``Depends(bearer)``) name local variables.

log = logging.getLogger("colhead.serve")


def _authoriser(token: str | None):
    """The dependency that checks the bearer token (none when the server has no token)."""
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

    return authorise


def _add_routes(app: FastAPI, svc: Service, auth: list) -> None:
    Files = Annotated[list[UploadFile], File(description="One or more image files.")]

    @app.get("/healthz", tags=["service"])
    def healthz() -> JSONResponse:
        """Liveness (503 when the column's worker is not running), column and counters."""
        status, body = svc.health()
        return JSONResponse(body, status)

    @app.get("/v1/stats", tags=["service"], dependencies=auth)
    def get_stats() -> dict:
        """Forward passes, images through the column, largest batch, queue, cache hits."""
        return svc.stats()

    @app.get("/v1/columns", tags=["columns"], dependencies=auth)
    def columns() -> dict:
        """The column registry (name, dim, offline availability) and the one served here."""
        from ..extract import describe_columns

        name = svc.embedder.spec.name
        rows = [{**r, "served": r["name"] == name} for r in describe_columns()]
        return {"served": svc.served, "columns": rows}

    @app.get("/v1/heads", tags=["heads"], dependencies=auth)
    def list_heads() -> dict:
        """Saved heads in the heads folder, the column each needs and whether it is loaded."""
        heads = [h.describe() for h in svc.heads.values()]
        return {"column": svc.embedder.spec.name, "heads": heads}

    @app.post("/v1/embed", tags=["columns"], dependencies=auth)
    async def embed(files: Files) -> JSONResponse:
        """Images -> vectors of the served column; a broken image gets ``error`` instead."""
        results = await svc.vectors(files)
        for it in results:
            if "vector" in it:
                it["vector"] = it["vector"].tolist()
        return JSONResponse({"column": svc.served, "results": results})

    @app.post("/v1/predict", tags=["heads"], dependencies=auth)
    async def predict(
        files: Files,
        head: Annotated[str, Query(description="Name of a loaded head (see /v1/heads).")],
        top: Annotated[int, Query(ge=1, le=100, description="How many labels to rank.")] = 5,
    ) -> JSONResponse:
        """Images -> label, probability and the top-k labels per image, with a saved head."""
        predictor = svc.head(head)
        items = await svc.vectors(files)
        ok = [it for it in items if "vector" in it]
        if ok:
            feats = np.stack([it.pop("vector") for it in ok])
            answers = await run_in_threadpool(predictor.predict_features, feats, top=top)
            for it, answer in zip(ok, answers):
                it.update(answer)
        return JSONResponse({"head": head, "column": svc.embedder.spec.name, "results": items})


def create_app(
    column: str = "efficientnet_lite0",
    heads_dir: str | os.PathLike | None = None,
    *,
    device: str = "auto",
    precision: str = "auto",
    backend: str = "auto",
    max_batch: int = 32,
    max_wait_ms: float = 5.0,
    batching: bool = True,
    max_upload_bytes: int = 20 * MiB,
    max_images: int = 64,
    token: str | None = None,
    cache_size: int = 4096,
    max_queue: int = 1024,
    request_timeout_s: float = 60.0,
    max_request_pixels: int = 512_000_000,
    allowed_hosts=None,
) -> FastAPI:
    """Load ``column`` (and the heads in ``heads_dir`` that fit it) behind a FastAPI app.

    Args:
        column: the served column (see ``colhead columns``).
        heads_dir: folder of saved heads (``*.npz``); heads of another column are not loaded.
        device: "auto" | "cpu" | "cuda".
        precision: "auto" | "fp32" | "bf16" | "fp16".
        backend: "auto" | "torch" | "openvino": the column's engine on the CPU.
        max_batch: most images in one forward pass.
        max_wait_ms: longest an image waits for others to share its forward pass.
        batching: False gives each request its own forward pass (for comparison).
        max_upload_bytes: largest request body; larger ones get 413.
        max_images: most images in one request; more get 413.
        token: bearer token the /v1 endpoints require (default: ``$COLHEAD_TOKEN``; none
            when unset or empty).
        cache_size: vectors kept in the content-hash LRU cache (0 disables it).
        max_queue: most images waiting for the column; a request beyond it gets 503.
        request_timeout_s: longest a request waits for the column; then 504.
        max_request_pixels: most pixels (from the image headers) in one request; more get 413.
        allowed_hosts: Host header names answered. Default: with a token, any; without one,
            the loopback names only (against DNS rebinding). ``["*"]`` answers any.

    Returns:
        The app; serve it with uvicorn (``run`` does).
    """
    from ..extract import Embedder, get_column

    # Cheap checks first, before the column loads.
    check_options(
        max_batch=(max_batch, 1),
        max_images=(max_images, 1),
        max_upload_bytes=(max_upload_bytes, 1),
        cache_size=(cache_size, 0),
        max_queue=(max_queue, 1),
        max_request_pixels=(max_request_pixels, 1),
    )
    for name, value in (("max_wait_ms", max_wait_ms), ("request_timeout_s", request_timeout_s)):
        if not value >= 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}.")
    heads_path = Path(heads_dir) if heads_dir is not None else None
    if heads_path is not None and not heads_path.is_dir():
        raise FileNotFoundError(f"The heads folder {heads_path} does not exist.")
    get_column(column)
    if token is None:
        token = os.environ.get("COLHEAD_TOKEN")
    token = token or None  # an empty token means none, not "send an empty one"
    if allowed_hosts is None:
        allowed_hosts = ["*"] if token else list(LOOPBACK_NAMES)

    t0 = time.perf_counter()
    embedder = Embedder(column, device=device, precision=precision, backend=backend)
    log.info(
        "column %s loaded in %.1f s on %s (%s, dim %d)",
        column,
        time.perf_counter() - t0,
        embedder.device,
        embedder.precision,
        embedder.dim,
    )
    batcher = Batcher(
        embedder.forward,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        batching=batching,
        max_queue=max_queue,
    )
    limits = {
        "max_images": max_images,
        "max_request_pixels": max_request_pixels,
        "request_timeout_s": request_timeout_s,
    }
    svc = Service(embedder, heads_path, batcher=batcher, cache_size=cache_size, limits=limits)

    @asynccontextmanager
    async def lifespan(app):
        yield
        # uvicorn has answered the requests in flight by now; finish any queued pass, bounded.
        await run_in_threadpool(batcher.stop, request_timeout_s)

    from .._version import __version__

    app = FastAPI(
        title="colhead",
        summary="Embed and classify images with a pretrained column and saved heads.",
        version=__version__,
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=max_upload_bytes)
    if "*" not in allowed_hosts:
        app.add_middleware(HostAllowlist, allowed=tuple(allowed_hosts))
    app.state.service = svc
    app.state.embedder, app.state.batcher, app.state.cache = embedder, batcher, svc.cache
    app.state.heads = svc.heads
    _add_routes(app, svc, [Depends(_authoriser(token))])
    return app
