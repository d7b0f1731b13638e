"""Fixtures of the annotation service tests: a throw-away PostgreSQL server, a database URL per test
(SQLite and PostgreSQL), projects with accounts, logged-in test clients, a real server process.

PostgreSQL comes from Debian's ``postgresql`` package (``make system-deps`` installs it). The server
runs in a temporary folder, on a Unix socket only (no TCP port), as the unprivileged ``postgres`` user
when the tests run as root (PostgreSQL refuses to run as root), and is stopped at the end.
Missing binaries FAIL the run as root or in CI (the set-up must install them); elsewhere they skip
with the reason, so a developer without root sees what to install.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

PG_USER = "postgres"


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """scrypt at N=2**10 instead of 2**14 in these tests: each account costs ~5 ms instead of ~0.1-0.2 s
    on the shared CPU. The cost travels inside each hash, so verification is unchanged;
    test_passwords checks the production parameters with real hashes."""
    from vlalign.annotate import passwords

    monkeypatch.setattr(passwords, "N", 2**10)


def missing_dependency(what: str, fix: str) -> None:
    """Fail where the set-up should have installed it (root, CI); skip loudly elsewhere."""
    msg = f"{what} is not installed: {fix}"
    if os.geteuid() == 0 or os.environ.get("CI"):
        pytest.fail(msg + " (make venv runs make system-deps, which installs it as root)")
    pytest.skip("NOT RUN: " + msg)


def pg_bindir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0)
    return Path(dirs[-1]) if dirs and (Path(dirs[-1]) / "initdb").exists() else None


def _as_pg(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="session")
def postgres_server():
    """(socket dir, port) of a PostgreSQL server started for this test session."""
    bindir = pg_bindir()
    if bindir is None:
        missing_dependency("PostgreSQL (initdb, pg_ctl)", "apt-get install postgresql")
    base = Path(tempfile.mkdtemp(prefix="vlalign-pg-"))  # under /tmp: the postgres user can reach it
    data, sock = base / "data", base / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        pw = pwd.getpwnam(PG_USER)
        for p in (base, sock):
            os.chown(p, pw.pw_uid, pw.pw_gid)
    env = {**os.environ, "LC_ALL": "C"}
    subprocess.run(_as_pg([str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "vlalign", "-E", "UTF8",
                           "--no-sync"]), check=True, capture_output=True, env=env)
    port = 5432
    opts = f"-k {sock} -c listen_addresses='' -p {port}"
    subprocess.run(_as_pg([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w",
                           "start"]), check=True, capture_output=True, env=env)
    try:
        yield str(sock), port
    finally:
        subprocess.run(_as_pg([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-W", "stop"]),
                       capture_output=True, env=env, check=False)
        shutil.rmtree(base, ignore_errors=True)


_counter = iter(range(10**6))


def new_pg_database(server: tuple[str, int]) -> str:
    """A fresh, empty schema on the session's server, as the URL's search_path; returns the URL.

    A schema per test instead of a database per test: CREATE DATABASE copies and syncs a template
    (~2 s each here), CREATE SCHEMA is instant, and the tables land in it all the same."""
    import psycopg

    sock, port = server
    name = f"t{os.getpid()}_{next(_counter)}"
    with psycopg.connect(host=sock, port=port, user="vlalign", dbname="postgres", autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{name}"')
    return f"postgresql+psycopg://vlalign@/postgres?host={sock}&port={port}&options=-csearch_path%3D{name}"


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """Each store/API test runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'annotate.sqlite'}"
    return new_pg_database(request.getfixturevalue("postgres_server"))


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
