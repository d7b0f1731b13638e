"""Engines and migrations of the labelling database: SQLite (WAL) by default, PostgreSQL by URL.

SQLite settings, and why:
- ``journal_mode=WAL``: readers never block the writer and a killed process leaves a consistent file
  (the WAL is replayed or discarded on the next open, never half-applied);
- ``synchronous=FULL``: a commit is on disk (fsync) before the server answers, so an acknowledged
  judgement survives a power cut as well as a killed process;
- ``BEGIN IMMEDIATE`` for every write transaction (:func:`begin_write`): the write lock is taken up
  front, so two request threads that read-then-write never deadlock on a lock upgrade (SQLITE_BUSY);
  ``busy_timeout`` lets them queue instead of failing. Reads use a plain (deferred) BEGIN and, under
  WAL, never wait for a writer;
- ``foreign_keys=ON``: SQLite ignores foreign keys unless told.

PostgreSQL (``postgresql+psycopg://user:password@host/dbname``) needs no settings: its default
(READ COMMITTED, fsync on commit) gives the same guarantees; the queue takes a row lock where it must
serialise (:meth:`vlalign.annotate.store.Store.claim_lock`).

The schema is created and upgraded with Alembic (``migrations/``), run in-process on open.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
DB_FILE = "annotate.sqlite"


def sqlite_url(folder: str | Path) -> str:
    """The default database of a project folder: ``FOLDER/annotate.sqlite``."""
    return f"sqlite:///{(Path(folder) / DB_FILE).resolve()}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn) -> None:
    conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("write") else "BEGIN")


@contextlib.contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A write transaction (SQLite: BEGIN IMMEDIATE); commits on success, rolls back on error."""
    with engine.connect() as conn:
        conn.execution_options(write=True)
        with conn.begin():
            yield conn


def make_engine(url: str, pool_size: int = 20) -> Engine:
    """An engine with the settings above; ``pool_size`` should cover the server's request threads."""
    u = make_url(url)
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": 30},
                               pool_size=pool_size, max_overflow=pool_size)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(u, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> str | None:
    """Bring the schema to ``revision`` (idempotent); returns the revision the database is at."""
    cfg = alembic_config()
    with begin_write(engine) as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
    return current_revision(engine)
