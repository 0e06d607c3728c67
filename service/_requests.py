"""One request's way through the service: limits, hashing, decoding, the batcher, answers.

``Service`` holds what ``create_app`` loaded (the column, its batcher and LRU cache, the heads)
and what a request may cost; the routes in ``_app`` only call it.
"""

import asyncio
import hashlib

import numpy as np
from fastapi import HTTPException, UploadFile
from starlette.concurrency import run_in_threadpool

from ._batcher import BatcherStopped, ForwardError, QueueFull
from ._heads import load_heads
from ._limits import image_pixels
from ._lru import LRU
from ._predictor import failure_reason


class Service:
    """The served column, its batcher and cache, the heads, and what a request may cost."""

    def __init__(self, embedder, heads_path, *, batcher, cache_size, limits: dict):
        self.embedder, self.batcher, self.heads_path = embedder, batcher, heads_path
        self.cache = LRU(cache_size)
        self.heads = load_heads(heads_path, embedder)
        self.max_images = limits["max_images"]
        self.max_request_pixels = limits["max_request_pixels"]
        self.request_timeout = limits["request_timeout_s"]
        spec = embedder.spec
        self.served = {
            **embedder.identity,
            "name": spec.name,
            "dim": embedder.dim,
            "column_key": embedder.column_key,
            "device": str(embedder.device),
            "weights_id": spec.weights_id,
            "source": spec.source,
            "licence": spec.licence,
        }

    def stats(self) -> dict:
        return {**self.batcher.stats(), "cache": self.cache.stats()}

    def health(self) -> tuple[int, dict]:
        alive = self.batcher.alive()
        body = {
            "status": "ok" if alive else "unavailable",
            "column": self.embedder.spec.name,
            "device": str(self.embedder.device),
            "precision": self.embedder.precision,
            "stats": self.stats(),
        }
        if not alive:
            body["reason"] = self.batcher._not_running()
        return (200 if alive else 503), body

    def head(self, name: str):
        entry = self.heads.get(name)
        if entry is None:
            loaded = sorted(h.name for h in self.heads.values() if h.predictor is not None)
            raise HTTPException(
                404,
                f"No head named {name!r}. Loaded heads: {', '.join(loaded) or 'none'}"
                + ("" if self.heads_path else " (the server was started without --heads)")
                + ". See GET /v1/heads.",
            )
        if entry.predictor is None:
            raise HTTPException(409, f"The head {name!r} is not loaded: {entry.reason}")
        return entry.predictor

    async def vectors(self, files: list[UploadFile]) -> list[dict]:
        """Per upload: ``{"filename", "sha256", "vector", "cached"}`` or ``{..., "error"}``."""
        if len(files) > self.max_images:
            raise HTTPException(
                413,
                f"This request has {len(files)} images; the limit is {self.max_images} per "
                "request. Split them over several requests.",
            )
        datas = [await f.read() for f in files]
        with self.batcher.arriving():
            items = await run_in_threadpool(self._prepare, files, datas)
            todo = [it for it in items if "array" in it]
            futures = self._submit(np.stack([it.pop("array") for it in todo])) if todo else []
        if todo:
            await self._collect(todo, futures)
        return items

    def _prepare(self, files, datas) -> list[dict]:
        """Hash, look up and decode the uploads (in the threadpool: off the event loop)."""
        items = []
        for f, data in zip(files, datas):
            item = {"filename": f.filename, "sha256": hashlib.sha256(data).hexdigest()}
            hit = self.cache.get(item["sha256"])
            if hit is not None:
                item.update(vector=hit, cached=True)
            items.append(item)
        # Headers only, before any decoding: a request's images may not hold more pixels in all
        # than the budget (many large images, or a few that decode huge from a few bytes).
        pixels = sum(image_pixels(d) for it, d in zip(items, datas) if "vector" not in it)
        if pixels > self.max_request_pixels:
            raise HTTPException(
                413,
                f"The images of this request hold {pixels:,} pixels in all; the server's limit "
                f"is {self.max_request_pixels:,} per request. Send fewer or smaller images per "
                "request.",
            )
        for item, data in zip(items, datas):
            if "vector" in item:
                continue
            try:
                item.update(array=self.embedder.preprocess(data), cached=False)
            except Exception as e:  # noqa: BLE001 - every failure is this image's own answer
                item["error"] = failure_reason(e)
        return items

    def _submit(self, arrays: np.ndarray) -> list:
        try:
            return self.batcher.submit(arrays)
        except QueueFull as e:
            raise HTTPException(503, str(e), headers={"Retry-After": "1"}) from None
        except BatcherStopped as e:
            raise HTTPException(503, str(e)) from None

    async def _collect(self, todo: list[dict], futures: list) -> None:
        """Wait (at most the request timeout) for the vectors of ``todo``; fill them in."""
        waits = [asyncio.wrap_future(f) for f in futures]
        try:
            done = await asyncio.wait_for(
                asyncio.gather(*waits, return_exceptions=True), self.request_timeout
            )
        except asyncio.TimeoutError:
            for f in futures:  # the worker skips a cancelled job that has not started
                f.cancel()
            raise HTTPException(
                504,
                f"The column did not answer within {self.request_timeout:g} s; the server is "
                "overloaded or stuck. Retry later, or with fewer images.",
            ) from None
        rows, errors = [], []
        for result in done:
            if isinstance(result, ForwardError):
                rows.append(result.vectors)
                errors += result.errors
            elif isinstance(result, BatcherStopped):
                raise HTTPException(503, str(result))
            elif isinstance(result, BaseException):
                raise result
            else:
                rows.append(result)
                errors += [None] * len(result)
        for it, row, err in zip(todo, np.concatenate(rows), errors):
            it["cached"] = False
            if err is not None:
                it["error"] = err
                continue
            it["vector"] = row
            self.cache.put(it["sha256"], row.copy())  # a copy: keep no batch alive
