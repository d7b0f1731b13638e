"""Helpers of the annotation service tests (accounts, projects, logged-in clients, server lines).

A module of its own, not the conftest: the suite has two conftest.py files, and ``from annotate_support import``
resolves to whichever pytest loaded last.
"""

from __future__ import annotations

import os
import subprocess
import time

import pytest


def missing_dependency(what: str, fix: str) -> None:
    """Fail where the set-up should have installed it (root, CI); skip loudly elsewhere."""
    msg = f"{what} is not installed: {fix}"
    if os.geteuid() == 0 or os.environ.get("CI"):
        pytest.fail(msg + " (make venv runs make system-deps, which installs it as root)")
    pytest.skip("NOT RUN: " + msg)



PASSWORD = "correct horse 1"


def make_project(url: str, data, users=("ann", "bob"), **kw):
    """A project on ``data`` with annotator accounts (password :data:`PASSWORD`) and a reviewer + admin."""
    from vlalign.annotate.session import open_project

    project = open_project(url, data, **kw)
    for name in users:
        project.store.add_user(name, "annotator", password=PASSWORD)
    project.store.add_user("rev", "reviewer", password=PASSWORD)
    project.store.add_user("boss", "admin", password=PASSWORD)
    return project


class Client:
    """A Flask test client logged in as one user, sending the CSRF header on every POST."""

    def __init__(self, app, name: str | None = None) -> None:
        self.c = app.test_client()
        self.csrf = ""
        if name is not None:
            r = self.c.post("/api/login", json={"name": name, "password": PASSWORD})
            assert r.status_code == 200, r.get_json()
            self.csrf = self.c.get("/api/me").get_json()["csrf"]

    def post(self, path: str, json=None, **kw):
        headers = {"X-CSRF-Token": self.csrf, **kw.pop("headers", {})}
        return self.c.post(path, json=json if json is not None else {}, headers=headers, **kw)

    def get(self, path: str, **kw):
        return self.c.get(path, **kw)

    def next(self) -> dict:
        r = self.post("/api/next")
        assert r.status_code == 200, r.get_json()
        return r.get_json()


def wait_for_line(proc: subprocess.Popen, prefix: str, timeout: float = 60.0) -> str:
    """Read the process's stdout until a line starts with ``prefix`` (the server announces its port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
            continue
        if line.startswith(prefix):
            return line
    raise TimeoutError(f"no line starting with {prefix!r} within {timeout} s")
