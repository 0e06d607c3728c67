"""The service under pressure (issue 13): a real uvicorn server on 127.0.0.1 for each case.

A full queue answers 503, a stuck column 504, a pass that fails is retried image by image, a
dead worker shows in /healthz, shutdown answers the requests in flight, a token-less server
refuses foreign Host names, a request's pixels are budgeted, and any per-image failure is that
image's error. The column's ``forward`` is wrapped to make it slow, stuck or failing on cue.
"""

import concurrent.futures as cf
import io
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

import uvicorn  # noqa: E402
from PIL import Image, PngImagePlugin  # noqa: E402
from test_serve import png, serve_app, uploads  # noqa: E402

from colhead import service  # noqa: E402
from colhead.cli import main  # noqa: E402
from conftest import photo  # noqa: E402

FAST = {"precision": "fp32", "device": "cpu"}
POISON = (255, 0, 255)  # a flat magenta image: the wrapped column fails on it


def serving(app):
    """Serve ``app`` on a free loopback port; yield (httpx client, uvicorn server). Shutdown must
    finish within 20 s: these tests stop servers whose column is stuck or dead."""
    return serve_app(app, join_s=20, must_stop=True)


def app_with(forward_wrapper=None, **kw):
    app = service.create_app("tiny", **FAST, **kw)
    if forward_wrapper is not None:
        b = app.state.batcher
        b.forward = forward_wrapper(b.forward)
    return app


def gate():
    """A forward that waits until the returned event is set (the column 'busy')."""
    release, entered = threading.Event(), threading.Event()

    def wrap(forward):
        def slow(batch):
            entered.set()
            release.wait(30)
            return forward(batch)

        return slow

    return wrap, release, entered


def flat(colour) -> bytes:
    return png(Image.new("RGB", (40, 40), colour))


def wait_for(cond, seconds=10.0):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


def test_a_full_queue_answers_503_and_the_queued_requests_still_finish():
    wrap, release, entered = gate()
    with serving(app_with(wrap, max_queue=2)) as (client, _), cf.ThreadPoolExecutor(4) as pool:
        one = uploads({"a.png": png(photo(1))})
        running = pool.submit(client.post, "/v1/embed", files=one)
        assert entered.wait(10)  # the first request holds the column
        queued = pool.submit(client.post, "/v1/embed", files=uploads({"b.png": png(photo(2))}))
        wait_for(lambda: client.get("/v1/stats").json()["queued"] == 1)
        two = uploads({"c.png": png(photo(3)), "d.png": png(photo(4))})
        r = client.post("/v1/embed", files=two)
        assert r.status_code == 503 and "over the queue limit of 2" in r.json()["detail"]
        assert r.headers["retry-after"] == "1"
        release.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
        assert client.get("/v1/stats").json()["refused"] == 2


def test_a_stuck_column_gives_504_within_the_request_timeout():
    wrap, release, _ = gate()
    with serving(app_with(wrap, request_timeout_s=0.5)) as (client, _):
        t = time.monotonic()
        r = client.post("/v1/embed", files=uploads({"a.png": png(photo(1))}))
        assert r.status_code == 504 and "did not answer within 0.5 s" in r.json()["detail"]
        assert time.monotonic() - t < 5
        release.set()
        assert client.post("/v1/embed", files=uploads({"b.png": png(photo(2))})).status_code == 200


def test_a_failed_pass_is_retried_image_by_image():
    def poisoned(forward):
        def fwd(batch):
            if (batch == np.array(POISON, np.uint8)).all(axis=(1, 2, 3)).any():
                raise RuntimeError("the column cannot take this image")
            return forward(batch)

        return fwd

    with serving(app_with(poisoned)) as (client, _):
        files = {"good.png": png(photo(1)), "bad.png": flat(POISON), "also.png": png(photo(2))}
        r = client.post("/v1/embed", files=uploads(files))
        assert r.status_code == 200, r.text
        good, bad, also = r.json()["results"]
        assert len(good["vector"]) == 32 and len(also["vector"]) == 32
        assert "vector" not in bad and "the column failed on this image" in bad["error"]
        assert client.get("/v1/stats").json()["retried_passes"] == 1
        # the failed image is not cached as if it had a vector
        again = client.post("/v1/embed", files=uploads({"bad.png": flat(POISON)})).json()
        assert "error" in again["results"][0]


def test_a_dead_worker_fails_requests_fast_and_healthz_says_so():
    def fatal(forward):
        def fwd(batch):
            raise SystemExit("simulated death of the worker")  # not an Exception: kills it

        return fwd

    with serving(app_with(fatal, request_timeout_s=20)) as (client, _):
        assert client.get("/healthz").json()["status"] == "ok"
        t = time.monotonic()
        r = client.post("/v1/embed", files=uploads({"a.png": png(photo(1))}))
        assert r.status_code == 503 and "worker thread died" in r.json()["detail"]
        assert time.monotonic() - t < 10  # failed at once, not after the timeout
        h = client.get("/healthz")
        assert h.status_code == 503 and h.json()["status"] == "unavailable"
        assert "SystemExit" in h.json()["reason"]
        r = client.post("/v1/embed", files=uploads({"b.png": png(photo(2))}))
        assert r.status_code == 503


def test_shutdown_answers_the_requests_in_flight():
    wrap, release, entered = gate()
    app = app_with(wrap)
    with cf.ThreadPoolExecutor(2) as pool:
        with serving(app) as (client, server):
            inflight = pool.submit(
                client.post, "/v1/embed", files=uploads({"a.png": png(photo(1))})
            )
            assert entered.wait(10)
            server.should_exit = True  # as SIGTERM does
            time.sleep(0.3)
            release.set()
            r = inflight.result(timeout=20)
        assert r.status_code == 200 and len(r.json()["results"][0]["vector"]) == 32
    assert not app.state.batcher.alive() or app.state.batcher._thread is None


def test_shutdown_with_a_stuck_column_is_bounded():
    wrap, release, entered = gate()
    app = app_with(wrap, request_timeout_s=1)
    with cf.ThreadPoolExecutor(2) as pool:
        with serving(app) as (client, server):
            inflight = pool.submit(
                client.post, "/v1/embed", files=uploads({"a.png": png(photo(1))})
            )
            assert entered.wait(10)
            server.should_exit = True
            t = time.monotonic()
            assert inflight.result(timeout=10).status_code == 504
        # serving() asserts the server thread ended; it must not wait for the stuck column
        assert time.monotonic() - t < 10
    release.set()


def test_tokenless_loopback_refuses_foreign_host_names(monkeypatch):
    monkeypatch.delenv("COLHEAD_TOKEN", raising=False)
    with serving(app_with()) as (client, _):
        port = client.base_url.port
        r = client.get("/healthz", headers={"Host": "evil.example"})
        assert r.status_code == 400 and "DNS rebinding" in r.json()["detail"]
        r = client.post("/v1/embed", files=uploads({"a": png(photo(1))}), headers={"Host": "x.io"})
        assert r.status_code == 400
        for ok in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "LOCALHOST"):
            assert client.get("/healthz", headers={"Host": ok}).status_code == 200, ok
    # With a token, the token is the guard and any name is answered.
    with serving(app_with(token="s3cret")) as (client, _):
        assert client.get("/healthz", headers={"Host": "proxy.internal"}).status_code == 200


def test_a_request_has_a_pixel_budget():
    with serving(app_with(max_request_pixels=100_000)) as (client, _):
        big = png(photo(1, size=(300, 300)))  # 90,000 pixels each
        assert client.post("/v1/embed", files=uploads({"a.png": big})).status_code == 200
        r = client.post(
            "/v1/embed",
            files=uploads({"b.png": png(photo(3, (300, 300))), "c.png": png(photo(2, (300, 300)))}),
        )
        assert r.status_code == 413 and "180,000 pixels in all" in r.json()["detail"]
        # the budget counts headers, so a tiny file that declares a huge image is refused
        # before it is decoded
        r = client.post("/v1/embed", files=uploads({"wide.png": png(Image.new("L", (1, 200_000)))}))
        assert r.status_code == 413


def test_any_failure_decoding_one_image_is_that_images_error(monkeypatch):
    app = app_with()
    embedder = app.state.embedder
    real = embedder.preprocess

    def preprocess(data):
        if data.startswith(b"\x89PNG") and b"boom" in data:
            raise MemoryError()
        return real(data)

    monkeypatch.setattr(embedder, "preprocess", preprocess)
    img = Image.new("RGB", (20, 20))
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "boom")
    buf = io.BytesIO()
    img.save(buf, "PNG", pnginfo=info)
    with serving(app) as (client, _):
        files = {"ok.png": png(photo(1)), "boom.png": buf.getvalue()}
        r = client.post("/v1/embed", files=uploads(files))
        assert r.status_code == 200, r.text
        ok, boom = r.json()["results"]
        assert len(ok["vector"]) == 32 and "out of memory" in boom["error"]


def test_run_guards_loopback_by_host_name_and_bounds_the_shutdown(monkeypatch):
    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app, **kw))
    monkeypatch.delenv("COLHEAD_TOKEN", raising=False)
    service.run(
        "127.0.0.1", 0, column="tiny", allow_hosts=["proxy.lan"], request_timeout_s=7, **FAST
    )
    assert seen["timeout_graceful_shutdown"] == 12
    allow = [m for m in seen["app"].user_middleware if m.cls.__name__ == "HostAllowlist"]
    assert allow and set(allow[0].kwargs["allowed"]) >= {"localhost", "127.0.0.1", "proxy.lan"}
    # With a token the token is the guard: no Host allowlist.
    service.run("127.0.0.1", 0, column="tiny", token="s3cret", **FAST)
    assert not [m for m in seen["app"].user_middleware if m.cls.__name__ == "HostAllowlist"]


def test_serve_passes_its_limits_to_run(monkeypatch):
    seen = {}
    monkeypatch.setattr(service, "run", lambda **kw: seen.update(kw))
    argv = ["serve", "--column", "tiny", "--max-queue", "7", "--request-timeout", "3"]
    argv += ["--max-megapixels", "1.5", "--allow-host", "a.lan", "--backend", "torch"]
    assert main(argv) == 0
    assert (seen["max_queue"], seen["request_timeout_s"]) == (7, 3.0)
    assert (seen["max_request_pixels"], seen["allow_hosts"]) == (1_500_000, ["a.lan"])
    assert seen["backend"] == "torch"
