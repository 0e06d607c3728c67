"""``colhead serve`` under load: requests/s and p50/p99 latency, with and without dynamic batching.

Two servers run side by side on loopback, the same column loaded in each, one with dynamic
batching (the default) and one with ``--no-batching`` (each request its own forward pass), both
with the content-hash cache off so that every request costs a forward pass. At concurrency 1, 8
and 32 a client keeps that many ``POST /v1/embed`` requests in flight, one distinct 320x240 JPEG
each, until ``--requests`` are answered or ``--time-cap`` seconds pass; the two servers take
turns in ``--rounds`` rounds per setting (on, off, on, off ...), as other processes share this
machine's cores.

    python bench/serve.py                      # efficientnet_lite0, ~2-4 minutes on 2 cores
    python bench/serve.py --column tiny        # the random-weight test column, seconds

Traffic goes only to 127.0.0.1; the servers are child processes, ended when the bench ends.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

os.environ.setdefault("COLHEAD_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
HOST = "127.0.0.1"


def jpeg(seed: int, size=(320, 240)) -> bytes:
    """A distinct, photo-like JPEG: smooth colour blobs plus fine noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    coarse = Image.fromarray((rng.random((6, 8, 3)) * 255).astype(np.uint8))
    img = np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), np.int16)
    img = np.clip(img + rng.integers(-6, 7, img.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Server:
    """``colhead serve`` in a child process on a free loopback port."""

    def __init__(self, args, *, batching: bool, log):
        self.port = free_port()
        self.url = f"http://{HOST}:{self.port}"
        cmd = [sys.executable, "-m", "colhead", "serve", "--host", HOST, "--port", str(self.port)]
        cmd += ["--column", args.column, "--device", args.device, "--precision", args.precision]
        cmd += ["--backend", args.backend]
        cmd += ["--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms)]
        cmd += ["--cache-size", "0"] + ([] if batching else ["--no-batching"])
        env = {**os.environ, "COLHEAD_TOKEN": ""}  # loopback, open: the token check is not timed
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 180) -> dict:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"The server exited with code {self.proc.returncode}.")
            try:
                return httpx.get(f"{self.url}/healthz", timeout=2).json()
            except httpx.TransportError:
                time.sleep(0.2)
        raise RuntimeError(f"The server on {self.url} was not ready after {timeout:.0f} s.")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def load(url: str, images: list[bytes], concurrency: int, time_cap: float) -> dict:
    """Keep ``concurrency`` requests in flight until every image is sent or time runs out."""
    import httpx

    latencies: list[float] = []
    errors = 0
    next_i = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        before = (await client.get("/v1/stats")).json()
        t0 = time.perf_counter()

        async def worker():
            nonlocal next_i, errors
            while next_i < len(images) and time.perf_counter() - t0 < time_cap:
                data, next_i = images[next_i], next_i + 1
                t = time.perf_counter()
                r = await client.post("/v1/embed", files=[("files", ("img.jpg", data))])
                latencies.append(time.perf_counter() - t)
                errors += r.status_code != 200 or "vector" not in r.json()["results"][0]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        after = (await client.get("/v1/stats")).json()
    return {
        "latencies": latencies,
        "wall": wall,
        "errors": errors,
        "passes": after["forward_passes"] - before["forward_passes"],
        "images": after["images"] - before["images"],
    }


def summary(runs: list[dict]) -> dict:
    """Rounds of one setting merged: requests/s over their summed time, latency percentiles."""
    lat = [x for r in runs for x in r["latencies"]]
    return {
        "n": len(lat),
        "errors": sum(r["errors"] for r in runs),
        "rps": len(lat) / sum(r["wall"] for r in runs),
        "p50": statistics.median(lat) * 1e3,
        "p99": float(np.percentile(lat, 99)) * 1e3,
        "per_pass": sum(r["images"] for r in runs) / max(sum(r["passes"] for r in runs), 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--column", default="efficientnet_lite0")
    ap.add_argument("--requests", type=int, default=200, help="requests per setting (at most)")
    ap.add_argument("--time-cap", type=float, default=60.0, help="seconds per setting (at most)")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--rounds", type=int, default=4, help="turns per setting (on, off, ...)")
    ap.add_argument("--max-batch", type=int, default=32)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--backend", default="auto", choices=["auto", "torch", "openvino"])
    args = ap.parse_args(argv)

    # Distinct images everywhere, so neither server can answer from a cache.
    n = args.requests
    images = [jpeg(i) for i in range(n * len(args.concurrency) + 4)]
    results: dict[tuple[int, bool], dict] = {}
    with tempfile.TemporaryFile("w+") as log:
        servers = {on: Server(args, batching=on, log=log) for on in (True, False)}
        try:
            health = {on: s.wait_ready() for on, s in servers.items()}
            for s in servers.values():  # warm-up: first passes allocate and tune kernels
                asyncio.run(load(s.url, images[-4:], 2, args.time_cap))
            for k, c in enumerate(args.concurrency):
                # Rounds, the two servers taking turns, so that a burst of load from other
                # processes hits both settings rather than one.
                runs: dict[bool, list[dict]] = {True: [], False: []}
                cap = args.time_cap / args.rounds
                for r in range(args.rounds):
                    chunk = images[k * n : (k + 1) * n][r :: args.rounds]
                    for on in (True, False):
                        runs[on].append(asyncio.run(load(servers[on].url, chunk, c, cap)))
                for on in (True, False):
                    results[c, on] = summary(runs[on])
        except Exception:
            log.seek(0)
            print(log.read()[-4000:], file=sys.stderr)
            raise
        finally:
            for s in servers.values():
                s.stop()

    h = health[True]
    print(
        f"colhead serve, column {h['column']} on {h['device']} ({h['precision']}), "
        f"{os.cpu_count()} cores; max_batch {args.max_batch}, max_wait {args.max_wait_ms} ms; "
        f"one 320x240 JPEG per request, at most {n} requests / {args.time_cap:.0f} s per setting"
    )
    # Other processes share these cores: the load average says how much the figures can mean.
    print(
        "load average (1, 5, 15 min) at the end: " + ", ".join(f"{x:.1f}" for x in os.getloadavg())
    )
    print(
        f"\n{'concurrency':>11}  {'batching':<8} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'img/pass':>8} {'requests':>8} {'errors':>6}"
    )
    for c in args.concurrency:
        for on in (True, False):
            r = results[c, on]
            print(
                f"{c:>11}  {'on' if on else 'off':<8} {r['rps']:8.1f} {r['p50']:8.1f} "
                f"{r['p99']:8.1f} {r['per_pass']:8.1f} {r['n']:8d} {r['errors']:6d}"
            )
    print("\nbatching speed-up (req/s on / off):")
    for c in args.concurrency:
        print(f"  concurrency {c:>2}: {results[c, True]['rps'] / results[c, False]['rps']:.2f}x")
    return 1 if any(r["errors"] for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
