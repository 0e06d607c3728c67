"""Serve the app with uvicorn: the checks before binding, logging, and a bounded shutdown."""

from __future__ import annotations

import logging
import os

from ._limits import LOOPBACK_NAMES, check_bind, is_loopback

log = logging.getLogger("colhead.serve")


def run(
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    allow_remote: bool = False,
    allow_hosts: list[str] | tuple[str, ...] = (),
    log_level: str = "info",
    **kw,
) -> None:
    """Build the app (``create_app(**kw)``) and serve it with uvicorn until interrupted.

    Args:
        host: address to bind; anything but loopback needs a token or ``allow_remote``.
        port: TCP port.
        allow_remote: serve without a token on a non-loopback address.
        allow_hosts: more Host header names a token-less loopback server answers to (e.g. the
            name a reverse proxy uses); the loopback names always work.
        log_level: uvicorn's log level.
        **kw: ``create_app`` arguments.

    On SIGINT/SIGTERM uvicorn stops accepting connections and answers the requests in flight;
    each waits for the column at most ``request_timeout_s``, so shutdown is bounded too.
    """
    import uvicorn

    token = kw.get("token")
    token = os.environ.get("COLHEAD_TOKEN") if token is None else token
    check_bind(host, token, allow_remote)
    if "allowed_hosts" not in kw:
        if token or not is_loopback(host):
            kw["allowed_hosts"] = ["*"]  # a token guards it, or --allow-remote asked for it
        else:
            kw["allowed_hosts"] = [*LOOPBACK_NAMES, host, *allow_hosts]
    if not log.handlers:  # uvicorn configures only its own loggers; show ours the same way
        from uvicorn.logging import DefaultFormatter

        handler = logging.StreamHandler()
        handler.setFormatter(DefaultFormatter("%(levelprefix)s colhead: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    from ._app import create_app

    app = create_app(**kw)
    grace = float(kw.get("request_timeout_s", 60.0)) + 5.0
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=grace)
