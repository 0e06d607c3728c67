"""What a request may cost and who may send it: body size, pixels, binding, Host names.

Plain ASGI middleware and functions, without FastAPI, so that ``import colhead.service`` stays
light and ``check_bind`` runs before anything heavy loads.
"""

from __future__ import annotations

import io
import ipaddress
import json
import warnings

MiB = 1 << 20
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class BodyLimit:
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
            return await _send_json(send, 413, self._message())
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                from starlette.exceptions import HTTPException

                # Raised inside the endpoint's body parsing, which FastAPI re-raises as is.
                raise HTTPException(413, self._message())
            return message

        return await self.app(scope, counted, send)


def host_name(header: str) -> str:
    """The name in a Host header, without port or IPv6 brackets, lower case."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1 : h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


class HostAllowlist:
    """ASGI middleware: refuse requests whose Host header names another server (DNS rebinding).

    A web page on evil.example can point its own name at 127.0.0.1 and have the browser send
    requests to a token-less service on loopback; those requests carry ``Host: evil.example``.
    Starlette's TrustedHostMiddleware would do, but it cuts ``[::1]:8000`` at the first colon
    and so refuses IPv6 loopback; hence this small copy.
    """

    def __init__(self, app, allowed: tuple[str, ...]):
        self.app = app
        self.allowed = {a.lower().strip("[]") for a in allowed}

    async def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket"):
            host = dict(scope["headers"]).get(b"host")
            # No Host at all is HTTP/1.0 from a script, never a browser: nothing to rebind.
            if host is not None and host_name(host.decode("latin-1")) not in self.allowed:
                name = host.decode("latin-1")[:100]
                return await _send_json(
                    send,
                    400,
                    f"The Host header {name!r} is not one this server answers to "
                    f"({', '.join(sorted(self.allowed))}): a token-less service on loopback "
                    "refuses other names, as a page on another site could otherwise reach it "
                    "(DNS rebinding). Use one of those names, set COLHEAD_TOKEN, or add the "
                    "name with --allow-host.",
                )
        return await self.app(scope, receive, send)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to anything


def check_bind(host: str, token: str | None, allow_remote: bool) -> None:
    """Refuse an unauthenticated server on a non-loopback address unless asked explicitly."""
    if token or allow_remote or is_loopback(host):
        return
    raise ValueError(
        f"Refusing to listen on {host} without a token: anyone who can reach this machine could "
        "use the service. Set COLHEAD_TOKEN (clients then send 'Authorization: Bearer TOKEN'), "
        "bind to 127.0.0.1, or pass --allow-remote to serve an open API on purpose."
    )


def image_pixels(data: bytes) -> int:
    """Pixels an image file declares in its header (0 when it has none: decoding will say why).

    Reads the header only, so a decompression bomb costs nothing here; the request's pixel
    budget is checked against these before any image is decoded.
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                w, h = img.size
    except Exception:  # noqa: BLE001 - not an image: its decode gives the reason
        return 0
    return int(w) * int(h)


def check_options(**limits) -> None:
    """Each ``name=(value, lowest)`` must be an integer >= lowest; else a ValueError naming it."""
    for name, (value, low) in limits.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}.")
