"""Request checks every endpoint relies on: Host and Origin, JSON bodies with bounded size, depth and
finite numbers. Each failure is an :class:`HTTPError` with the status a client can act on — never a 500.

- **Host** (DNS rebinding): a page on evil.example whose name is re-pointed at 127.0.0.1 reaches this
  server with ``Host: evil.example``; only the configured names are answered (400 otherwise).
- **Origin** (CSRF, together with the per-login CSRF token): a state-changing request that carries
  ``Origin`` or ``Sec-Fetch-Site`` must come from this site (403 otherwise).
- **Body**: JSON only (415 otherwise), at most ``max_bytes`` (413), nested at most ``MAX_DEPTH`` levels
  (400: Python's parser would otherwise recurse until RecursionError), numbers finite (``NaN``,
  ``Infinity`` and ``1e999`` are refused: they are not JSON and other readers choke on them).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

MAX_DEPTH = 8
MAX_BODY = 64 * 1024
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")


class HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class GuardConfig:
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    max_body: int = MAX_BODY
    max_depth: int = MAX_DEPTH
    extra: dict[str, Any] = field(default_factory=dict)


def hostname(host_header: str) -> str:
    """``example.org:8765`` -> ``example.org``; ``[::1]:80`` -> ``::1``; lower case."""
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def check_host(host_header: str | None, cfg: GuardConfig) -> None:
    if not host_header or hostname(host_header) not in cfg.allowed_hosts:
        raise HTTPError(400, f"Host {host_header!r} is not served here (fix: open the app by a configured "
                             "name, or add it with --allowed-host)")


def check_origin(method: str, origin: str | None, fetch_site: str | None, scheme: str, host_header: str,
                 cfg: GuardConfig) -> None:
    """Refuse cross-site state changes; requests without these headers (non-browsers) pass to the CSRF check."""
    if method not in UNSAFE_METHODS:
        return
    if fetch_site is not None and fetch_site not in ("same-origin", "none"):
        raise HTTPError(403, f"cross-site request refused (Sec-Fetch-Site: {fetch_site})")
    if origin is not None:
        parts = urlsplit(origin)
        if origin == "null" or parts.hostname not in cfg.allowed_hosts or parts.netloc.lower() != host_header.lower() \
                or parts.scheme != scheme:
            raise HTTPError(403, f"cross-origin request refused (Origin: {origin[:100]})")


def json_depth_ok(raw: str, limit: int) -> bool:
    """True when no array/object nests deeper than ``limit`` (brackets inside strings do not count)."""
    depth, in_string, escaped = 0, False, False
    for ch in raw:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            if depth > limit:
                return False
        elif ch in "]}":
            depth -= 1
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number (fix: send a finite number)")


def _finite_float(text: str) -> float:
    x = float(text)
    if not math.isfinite(x):
        raise ValueError(f"{text[:30]} overflows a float (fix: send a finite number)")
    return x


def parse_json_body(raw: bytes, content_type: str | None, cfg: GuardConfig) -> Any:
    """Decode a request body under the limits above; raises :class:`HTTPError` (413/415/400)."""
    if len(raw) > cfg.max_body:
        raise HTTPError(413, f"request body over {cfg.max_body} bytes")
    if (content_type or "").split(";")[0].strip().lower() != "application/json":
        raise HTTPError(415, "send the body as JSON (Content-Type: application/json)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, "body: not UTF-8") from None
    if not json_depth_ok(text, cfg.max_depth):
        raise HTTPError(400, f"body: JSON nested deeper than {cfg.max_depth} levels")
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError; so is a 5000-digit int
        raise HTTPError(400, f"body: invalid JSON ({str(exc)[:200]})") from None
