"""Serve the app with waitress: a production WSGI server in pure Python (no compiler, any OS).

WHY waitress (docs/annotate.md has the full argument): the app is synchronous SQLAlchemy code, so a
threaded WSGI server is the natural fit; waitress buffers requests before the app sees them, enforces
the body-size limit itself (413 before any byte reaches Flask), and understands the forwarded headers
of a trusted reverse proxy. One process with N threads keeps the background learner in-process; the
database, not the process, holds all state, so a killed server restarts clean.
"""

from __future__ import annotations

import sys
from typing import Any

from waitress.server import create_server

PROXY_HEADERS = "x-forwarded-proto x-forwarded-host x-forwarded-for x-forwarded-port"


def make_server(app: Any, host: str, port: int, threads: int = 16, max_body: int = 64 * 1024,
                trusted_proxy: str | None = None) -> Any:
    """A waitress server bound to (host, port); port 0 picks a free one (``server.effective_port``)."""
    kw: dict[str, Any] = {"host": host, "port": port, "threads": threads, "max_request_body_size": max_body,
                          "ident": "vlalign", "channel_timeout": 60, "connection_limit": 1000,
                          "clear_untrusted_proxy_headers": True}
    if trusted_proxy:
        kw.update(trusted_proxy=trusted_proxy, trusted_proxy_headers=PROXY_HEADERS, trusted_proxy_count=1)
    return create_server(app, **kw)


def run(server: Any, announce: str = "") -> None:
    """Announce the bound address on stdout (tests and scripts read it), then serve until stopped."""
    print(f"listening on http://{server.effective_host}:{server.effective_port}/ {announce}".rstrip(), flush=True)
    try:
        server.run()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.close()
