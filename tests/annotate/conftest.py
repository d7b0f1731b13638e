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
from pathlib import Path

import pytest
from annotate_support import missing_dependency

PG_USER = "postgres"


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch):
    """scrypt at N=2**10 instead of 2**14 in these tests: each account costs ~5 ms instead of ~0.1-0.2 s
    on the shared CPU. The cost travels inside each hash, so verification is unchanged;
    test_passwords checks the production parameters with real hashes."""
    from vlalign.annotate import passwords

    monkeypatch.setattr(passwords, "N", 2**10)


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
