"""The HTTP judge against misbehaving loopback servers: a trickling server is cut at the overall deadline,
redirects to another origin are not followed (and credentials never follow a redirect), replies
are size-capped, and the API key never appears in an error."""

from __future__ import annotations

import json
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from vlalign.rewards.judge_backends import JudgeRequestError, OpenAIChatJudge, redact

KEY = "sk-test-secret-1234567890"
OK_BODY = json.dumps({"choices": [{"message": {"content": "Score: 7"}}]}).encode()


class Recorder(BaseHTTPRequestHandler):
    """Routes: /v1/... answers by ``mode``; records the path and Authorization header of every request."""

    seen: ClassVar[list[tuple[str, str | None]]] = []
    mode: ClassVar[str] = "ok"
    other: ClassVar[str] = ""  # base URL of another server, for cross-origin redirects

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        auth = self.headers.get("Authorization")
        type(self).seen.append((self.path, auth))
        mode = type(self).mode
        if mode == "redirect_other" and self.path.startswith("/v1"):
            return self._redirect(f"{type(self).other}/v1/chat/completions")
        if mode == "redirect_same" and self.path.startswith("/v1"):
            return self._redirect("/v2/chat/completions")
        if mode == "huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
            chunk = b"x" * 65536
            try:
                for _ in range(160):
                    self.wfile.write(chunk)
            except OSError:
                pass
            return None
        if mode == "echo_key":  # an error page that echoes the request's credentials
            body = f"bad request from {auth}".encode()
            self.send_response(400, f"Rejected {auth}")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        if mode == "echo_key_500":
            body = f"upstream failed for {auth}".encode()
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return None
        self.send_response(200)
        self.send_header("Content-Length", str(len(OK_BODY)))
        self.end_headers()
        self.wfile.write(OK_BODY)
        return None

    def _redirect(self, location: str) -> None:
        self.send_response(307)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


def _serve(handler) -> tuple[str, object]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{srv.server_address[1]}", srv


@pytest.fixture
def servers(monkeypatch):
    monkeypatch.setenv("VLALIGN_TEST_KEY", KEY)
    Recorder.seen, Recorder.mode = [], "ok"
    a, sa = _serve(Recorder)
    b, sb = _serve(Recorder)
    Recorder.other = b
    yield a, b
    for s in (sa, sb):
        s.shutdown()
        s.server_close()


def _judge(url: str, **kw) -> OpenAIChatJudge:
    return OpenAIChatJudge(url + "/v1", api_key_env="VLALIGN_TEST_KEY", retries=0, workers=1, **kw)


def test_round_trip_sends_the_key(servers):
    a, _ = servers
    assert _judge(a).complete(["q"], [[]]) == ["Score: 7"]
    assert Recorder.seen == [("/v1/chat/completions", f"Bearer {KEY}")]


def test_cross_origin_redirect_not_followed(servers):
    a, _b = servers
    Recorder.mode = "redirect_other"
    with pytest.raises(JudgeRequestError, match="another origin") as err:
        _judge(a).complete(["q"], [[]])
    assert len(Recorder.seen) == 1  # the other origin never got the request (nor the key)
    assert KEY not in str(err.value)


def test_same_origin_redirect_followed_without_credentials(servers):
    a, _ = servers
    Recorder.mode = "redirect_same"
    assert _judge(a).complete(["q"], [[]]) == ["Score: 7"]
    assert Recorder.seen == [("/v1/chat/completions", f"Bearer {KEY}"), ("/v2/chat/completions", None)]


def test_reply_size_cap(servers):
    a, _ = servers
    Recorder.mode = "huge"
    with pytest.raises(JudgeRequestError, match="max_reply_bytes=100000"):
        _judge(a, max_reply_bytes=100_000).complete(["q"], [[]])


@pytest.mark.parametrize("mode", ["echo_key", "echo_key_500"])
def test_key_echoed_by_the_server_is_redacted(servers, mode):
    a, _ = servers
    Recorder.mode = mode
    with pytest.raises(JudgeRequestError) as err:
        _judge(a).complete(["q"], [[]])
    text = str(err.value)
    assert KEY not in text and "***" in text, text
    assert err.value.__cause__ is None or KEY not in str(err.value.__cause__)


def test_redact_longest_first():
    assert redact(f"Authorization: Bearer {KEY} / {KEY}", [f"Bearer {KEY}", KEY]) == "Authorization: *** / ***"


class Trickle(socketserver.BaseRequestHandler):
    """Sends an HTTP reply one byte every 1.5 s (never finishing within any sane deadline)."""

    def handle(self):
        self.request.recv(65536)
        reply = b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000
        try:
            for byte in reply:
                self.request.sendall(bytes([byte]))
                time.sleep(1.5)
        except OSError:
            pass


def test_trickling_server_is_cut_at_the_deadline():
    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Trickle)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        judge = OpenAIChatJudge(f"http://127.0.0.1:{srv.server_address[1]}/v1", timeout=2, retries=0, workers=1,
                                api_key_env=None)
        t0 = time.monotonic()
        with pytest.raises(JudgeRequestError, match="no complete answer within 2 s"):
            judge.complete(["q"], [[]])
        # A per-read timeout would wait ~1.5 s per byte for ~1,040 bytes (about 26 minutes); the overall
        # deadline stops at ~2 s. 20 s leaves room for a loaded CI machine and cannot pass without a deadline.
        assert time.monotonic() - t0 < 20
    finally:
        srv.shutdown()
        srv.server_close()
