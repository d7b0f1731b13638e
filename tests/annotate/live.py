"""A real server process (`vlalign annotate serve`, waitress) and a small HTTP client for the load,
fault and browser tests. Loopback only; every loop in the callers is bounded in count and time."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path

from annotate_support import PASSWORD


@dataclass
class Server:
    """`vlalign annotate serve` on 127.0.0.1; ``port`` is fixed after the first start so restarts reuse it."""

    db_url: str
    folder: Path
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen | None = None
    starts: int = 0
    log: Path | None = None

    def start(self, timeout: float = 120.0) -> None:
        """Start and wait for the announced port. Output goes to a log file, not a pipe: under load waitress
        logs its task-queue depth, and a pipe nobody reads would fill up and block the server."""
        cmd = [sys.executable, "-m", "vlalign.annotate", "serve", "--db", self.db_url, "--out", str(self.folder),
               "--port", str(self.port), *self.args]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.folder.mkdir(parents=True, exist_ok=True)
        self.log = self.folder / f"server-{self.starts}.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        deadline = time.monotonic() + timeout
        while True:
            found = [x for x in self.log.read_text().splitlines() if x.startswith("listening on ")]
            if found:
                break
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server did not start within {timeout} s")
            time.sleep(0.05)
        self.port = int(found[0].split(":")[2].split("/")[0])
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no handler runs, nothing is flushed by the server itself."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)


class HttpUser:
    """One annotator over one keep-alive connection: login cookie + CSRF header, JSON in and out."""

    def __init__(self, port: int, name: str | None = None, timeout: float = 30.0) -> None:
        self.port, self.timeout = port, timeout
        self.conn: http.client.HTTPConnection | None = None
        self.cookie, self.csrf = "", ""
        if name is not None:
            self.login(name)

    def _conn(self) -> http.client.HTTPConnection:
        if self.conn is None:
            self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        return self.conn

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def request(self, method: str, path: str, body: bytes | dict | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict]:
        h = {"Host": f"127.0.0.1:{self.port}"}
        if self.cookie:
            h["Cookie"] = self.cookie
        if method == "POST":
            h["X-CSRF-Token"] = self.csrf
            h["Content-Type"] = "application/json"
        h.update(headers or {})
        data = json.dumps(body).encode() if isinstance(body, dict) else body
        try:
            conn = self._conn()
            conn.request(method, path, body=data, headers=h)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException):
            self.close()  # the next call reconnects (the server may have been restarted)
            raise
        if resp.getheader("Connection", "").lower() == "close":
            self.close()
        for part in resp.headers.get_all("Set-Cookie") or []:
            c = SimpleCookie(part)
            self.cookie = "; ".join(f"{k}={v.value}" for k, v in c.items())
        try:
            return resp.status, json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return resp.status, {"raw": raw[:200].decode("latin-1")}

    def login(self, name: str) -> None:
        status, body = self.request("POST", "/api/login", {"name": name, "password": PASSWORD})
        assert status == 200, body
        status, body = self.request("GET", "/api/me")
        assert status == 200, body
        self.csrf = body["csrf"]


def retry(call, deadline: float, pause: float = 0.05):
    """Call until it returns without a connection error (a server being restarted); bounded by ``deadline``."""
    while True:
        try:
            return call()
        except (OSError, http.client.HTTPException):
            if time.monotonic() > deadline:
                raise
            time.sleep(pause)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty list."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, round(q / 100 * len(s) + 0.5) - 1))
    return s[k]
