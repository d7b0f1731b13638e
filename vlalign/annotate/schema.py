"""The labelling database: one project per database (SQLite file by default, PostgreSQL by URL).

Tables (SQLAlchemy Core; the Alembic migrations in ``migrations/versions`` create exactly these):

- ``project``      one row: fingerprint of the items and the serving settings (strategy, seed, aspects, ...)
- ``images``       image bytes by SHA-256: items point at hashes, so an image is looked up by item id +
                   index and never by a path (no traversal), and identical images are stored once
- ``items``        the pairs to judge, in source order; ``gold`` holds the known answer of gold items
- ``users``        accounts: role, scrypt password hash, one-time invite token hash, labels disabled
- ``logins``       server-side login sessions (SHA-256 of the cookie token) with their CSRF token
- ``assignments``  which item was served to whom and when; a submission needs one (no labelling of items
                   never shown), and it carries the latest outcome so queue counts are one GROUP BY
- ``judgements``   append-only history, one row per submission (who, when, what); a changed mind adds a row.
                   ``(user_id, client_key)`` is unique: a retried POST is answered, never stored twice
- ``events``       audit log of every other state change (accounts, logins, reviews, imports, model runs)
- ``scores``       the active-learning reward model's scores per item, with the model version
- ``model_runs``   each background retraining: when, on how many labels, outcome

Times are naive UTC ``DateTime`` (SQLite has no time zones); :func:`utcnow` makes them.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING = {"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
          "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s", "pk": "pk_%(table_name)s"}
metadata = MetaData(naming_convention=NAMING)

ROLES = ("admin", "reviewer", "annotator")
ITEM_ID_MAX = 200
NAME_MAX = 64


def utcnow() -> datetime:
    """Naive UTC now: what every DateTime column holds."""
    return datetime.now(timezone.utc).replace(tzinfo=None)  # noqa: UP017 (3.10 has no datetime.UTC)


def iso(t: datetime | None) -> str:
    """ISO-8601 with an explicit UTC offset, milliseconds: the form judgements are exported with."""
    return "" if t is None else t.replace(tzinfo=timezone.utc).isoformat(timespec="milliseconds")  # noqa: UP017


project = Table(
    "project", metadata,
    Column("id", Integer, primary_key=True),
    Column("fingerprint", String(64), nullable=False),
    Column("settings", JSON, nullable=False),
    Column("created_at", DateTime, nullable=False),
)

images = Table(
    "images", metadata,
    Column("sha256", String(64), primary_key=True),
    Column("mime", String(32), nullable=False),
    Column("data", LargeBinary, nullable=False),
)

items = Table(
    "items", metadata,
    Column("id", String(ITEM_ID_MAX), primary_key=True),
    Column("position", Integer, nullable=False, unique=True),
    Column("record_id", String(ITEM_ID_MAX), nullable=False),
    Column("prompt", Text, nullable=False),
    Column("first", Text, nullable=False),
    Column("second", Text, nullable=False),
    Column("source_order", JSON, nullable=False),
    Column("n_source_responses", Integer, nullable=False),
    Column("images", JSON, nullable=False),
    Column("meta", JSON, nullable=False),
    Column("gold", String(8)),
)

users = Table(
    "users", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(NAME_MAX), nullable=False, unique=True),
    Column("role", String(16), nullable=False),
    Column("password_hash", String(255)),
    Column("invite_hash", String(64), unique=True),
    Column("invite_expires", DateTime),
    Column("labels_disabled", Boolean, nullable=False, default=False),
    Column("created_at", DateTime, nullable=False),
)

logins = Table(
    "logins", metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("csrf", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("expires_at", DateTime, nullable=False),
)

assignments = Table(
    "assignments", metadata,
    Column("item_id", String(ITEM_ID_MAX), ForeignKey("items.id"), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id"), primary_key=True, index=True),
    Column("served_at", DateTime, nullable=False),
    Column("outcome", String(8)),
    Column("judgement_id", String(32)),
    Column("submitted_at", DateTime),
)

judgements = Table(
    "judgements", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("id", String(32), nullable=False, unique=True),
    Column("item_id", String(ITEM_ID_MAX), ForeignKey("items.id"), nullable=False, index=True),
    Column("user_id", Integer, ForeignKey("users.id"), nullable=False, index=True),
    Column("outcome", String(8), nullable=False),
    Column("shown_left", String(8), nullable=False),
    Column("corrections", JSON, nullable=False),
    Column("ratings", JSON, nullable=False),
    Column("unsafe", JSON, nullable=False),
    Column("comment", Text, nullable=False),
    Column("seconds", Float),
    Column("served_at", DateTime),
    Column("created_at", DateTime, nullable=False),
    Column("client_key", String(64)),
    Column("origin", String(32), nullable=False),
    UniqueConstraint("user_id", "client_key", name="uq_judgements_user_client_key"),
)

events = Table(
    "events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime, nullable=False),
    Column("user_id", Integer, ForeignKey("users.id")),
    Column("action", String(32), nullable=False),
    Column("target", String(ITEM_ID_MAX), nullable=False, default=""),
    Column("detail", JSON, nullable=False),
)

scores = Table(
    "scores", metadata,
    Column("item_id", String(ITEM_ID_MAX), ForeignKey("items.id"), primary_key=True),
    Column("r_first", Float, nullable=False),
    Column("r_second", Float, nullable=False),
    Column("version", Integer, nullable=False),
)

model_runs = Table(
    "model_runs", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("started_at", DateTime, nullable=False),
    Column("finished_at", DateTime),
    Column("n_labels", Integer, nullable=False),
    Column("status", String(16), nullable=False),
    Column("detail", JSON, nullable=False),
)
