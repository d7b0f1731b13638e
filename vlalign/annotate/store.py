"""The labelling project in its database: items, images, accounts, logins, assignments, judgements, audit.

One :class:`Store` per server process, shared by its request threads (SQLAlchemy's pool gives each
thread its own connection). Every write is one transaction: a judgement row and the assignment it
answers change together or not at all, so a killed server leaves no half-written record, and a
commit returns only once the database has it on disk (see :mod:`vlalign.annotate.database`).
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, and_, func, insert, or_, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from vlalign.annotate import schema as t
from vlalign.annotate.database import begin_write, make_engine, upgrade
from vlalign.annotate.items import PairItem, image_mime
from vlalign.annotate.judgements import OUTCOMES, Correction, Judgement
from vlalign.annotate.passwords import hash_password, verify_password

INVITE_DAYS = 7
LOGIN_HOURS = 12


class NotServed(PermissionError):
    """A submission for an item that was never served to this annotator."""


@dataclass(frozen=True)
class User:
    id: int
    name: str
    role: str
    labels_disabled: bool = False


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _user(row: Any) -> User:
    return User(row.id, row.name, row.role, bool(row.labels_disabled))


def item_row(it: PairItem, position: int) -> dict[str, Any]:
    return {"id": it.item_id, "position": position, "record_id": it.record_id, "prompt": it.prompt,
            "first": it.responses[0], "second": it.responses[1], "source_order": list(it.source_order),
            "n_source_responses": it.n_source_responses, "images": list(it.images), "meta": it.meta, "gold": it.gold}


def _item(row: Any) -> PairItem:
    return PairItem(row.id, row.record_id, list(row.images), row.prompt, (row.first, row.second),
                    tuple(row.source_order), row.n_source_responses, dict(row.meta), row.gold)


class Store:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.sqlite = engine.dialect.name == "sqlite"
        self._items: list[PairItem] | None = None
        self._items_lock = threading.Lock()

    @classmethod
    def open(cls, url: str, pool_size: int = 20) -> Store:
        """Connect and bring the schema up to date (Alembic ``upgrade head``)."""
        engine = make_engine(url, pool_size)
        upgrade(engine)
        return cls(engine)

    def close(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def transaction(self, serialize: bool = False) -> Iterator[Connection]:
        """One transaction; ``serialize`` makes it exclusive among queue claims (SQLite: every
        transaction already is, BEGIN IMMEDIATE; PostgreSQL: a row lock on the project row)."""
        with begin_write(self.engine) as conn:
            if serialize and not self.sqlite:
                conn.execute(select(t.project.c.id).where(t.project.c.id == 1).with_for_update())
            yield conn

    # ---- project + items ---------------------------------------------------------------------------

    def settings(self) -> dict[str, Any] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.project)).first()
        return None if row is None else {**row.settings, "fingerprint": row.fingerprint}

    def create_project(self, fingerprint: str, settings: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(insert(t.project).values(id=1, fingerprint=fingerprint, settings=settings,
                                                  created_at=t.utcnow()))

    def update_settings(self, settings: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(update(t.project).where(t.project.c.id == 1).values(settings=settings))

    def add_items(self, items: list[PairItem], blobs: dict[str, bytes], user: User | None = None) -> int:
        """Insert new items (after the existing ones) and their images; existing ids are an error."""
        with self.transaction() as conn:
            start = conn.execute(select(func.coalesce(func.max(t.items.c.position), -1))).scalar_one() + 1
            known = set(conn.execute(select(t.images.c.sha256).where(t.images.c.sha256.in_(list(blobs)))).scalars())
            new_blobs = [{"sha256": h, "mime": image_mime(b), "data": b} for h, b in blobs.items() if h not in known]
            if new_blobs:
                conn.execute(insert(t.images), new_blobs)
            clash = conn.execute(select(t.items.c.id).where(t.items.c.id.in_([it.item_id for it in items]))).scalars().all()
            if clash:
                raise ValueError(f"items already in the project: {sorted(clash)[:5]} (fix: give new, unique ids)")
            if items:
                conn.execute(insert(t.items), [item_row(it, start + k) for k, it in enumerate(items)])
            self._event(conn, user, "items.add", "", {"n": len(items), "gold": sum(it.gold is not None for it in items)})
        with self._items_lock:
            self._items = None
        return len(items)

    def items(self) -> list[PairItem]:
        """Every item (gold included) in position order; cached, items never change once stored."""
        with self._items_lock:
            if self._items is None:
                with self.engine.connect() as conn:
                    self._items = [_item(r) for r in conn.execute(select(t.items).order_by(t.items.c.position))]
            return self._items

    def image(self, sha: str) -> tuple[str, bytes] | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.images.c.mime, t.images.c.data).where(t.images.c.sha256 == sha)).first()
        return None if row is None else (row.mime, bytes(row.data))

    def image_files(self, folder: str | Path, shas: list[str] | None = None) -> dict[str, Path]:
        """Write images as ``folder/<sha256>.<ext>`` (content-addressed: names never collide, rewrites are
        no-ops) and return hash -> path; all images of the project unless ``shas`` is given."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        q = select(t.images.c.sha256, t.images.c.mime)
        if shas is not None:
            q = q.where(t.images.c.sha256.in_(list(set(shas))))
        out: dict[str, Path] = {}
        with self.engine.connect() as conn:
            for sha, mime in conn.execute(q).all():
                path = folder / f"{sha}.{mime.split('/')[-1].replace('jpeg', 'jpg')}"
                if not path.is_file():
                    data = conn.execute(select(t.images.c.data).where(t.images.c.sha256 == sha)).scalar_one()
                    tmp = path.with_suffix(path.suffix + ".tmp")
                    tmp.write_bytes(bytes(data))
                    tmp.replace(path)
                out[sha] = path
        return out

    # ---- users + logins -----------------------------------------------------------------------------

    def add_user(self, name: str, role: str, password: str | None = None, by: User | None = None,
                 invite_days: float = INVITE_DAYS) -> str | None:
        """Create an account; without a password it gets a one-time invite token (returned, stored hashed)."""
        if role not in t.ROLES:
            raise ValueError(f"role {role!r}: use one of {', '.join(t.ROLES)}")
        token = None if password else secrets.token_urlsafe(24)
        row = {"name": name, "role": role, "labels_disabled": False, "created_at": t.utcnow(),
               "password_hash": hash_password(password) if password else None,
               "invite_hash": _token_hash(token) if token else None,
               "invite_expires": t.utcnow() + timedelta(days=invite_days) if token else None}
        try:
            with self.transaction() as conn:
                conn.execute(insert(t.users).values(**row))
                self._event(conn, by, "user.add", name, {"role": role, "invite": token is not None})
        except IntegrityError:
            raise ValueError(f"user {name!r} exists already (fix: choose another name, or `user invite` them)") from None
        return token

    def new_invite(self, name: str, by: User | None = None, invite_days: float = INVITE_DAYS) -> str:
        """A fresh one-time invite token for an existing account (e.g. a forgotten password)."""
        token = secrets.token_urlsafe(24)
        with self.transaction() as conn:
            n = conn.execute(update(t.users).where(t.users.c.name == name).values(
                invite_hash=_token_hash(token), invite_expires=t.utcnow() + timedelta(days=invite_days))).rowcount
            if not n:
                raise KeyError(f"no user {name!r}")
            self._event(conn, by, "user.invite", name, {})
        return token

    def user(self, name: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.users).where(t.users.c.name == name)).first()
        return None if row is None else _user(row)

    def users(self) -> list[User]:
        with self.engine.connect() as conn:
            return [_user(r) for r in conn.execute(select(t.users).order_by(t.users.c.id))]

    def check_password(self, name: str, password: str) -> User | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(t.users).where(t.users.c.name == name)).first()
        stored = row.password_hash if row is not None else None
        ok = verify_password(password, stored)  # hashes even for unknown users: no timing oracle
        return _user(row) if ok and row is not None else None

    def redeem_invite(self, token: str, password: str) -> User | None:
        """Set the password of the invite's account and burn the token; None if unknown or expired."""
        with self.transaction() as conn:
            row = conn.execute(select(t.users).where(t.users.c.invite_hash == _token_hash(token))).first()
            if row is None or row.invite_expires is None or row.invite_expires < t.utcnow():
                return None
            conn.execute(update(t.users).where(t.users.c.id == row.id).values(
                password_hash=hash_password(password), invite_hash=None, invite_expires=None))
            self._event(conn, _user(row), "user.invite_redeemed", row.name, {})
        return _user(row)

    def set_labels_disabled(self, name: str, disabled: bool, by: User | None) -> None:
        with self.transaction() as conn:
            n = conn.execute(update(t.users).where(t.users.c.name == name).values(labels_disabled=disabled)).rowcount
            if not n:
                raise KeyError(f"no user {name!r}")
            self._event(conn, by, "labels.disable" if disabled else "labels.enable", name, {})

    def create_login(self, user: User, hours: float = LOGIN_HOURS) -> tuple[str, str]:
        """A new login session: (cookie token, CSRF token). Only the token's hash is stored."""
        token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        now = t.utcnow()
        with self.transaction() as conn:
            conn.execute(insert(t.logins).values(token_hash=_token_hash(token), user_id=user.id, csrf=csrf,
                                                 created_at=now, expires_at=now + timedelta(hours=hours)))
            self._event(conn, user, "login", user.name, {})
        return token, csrf

    def login(self, token: str) -> tuple[User, str] | None:
        """(user, CSRF token) of a live login session."""
        with self.engine.connect() as conn:
            row = conn.execute(select(t.users, t.logins.c.csrf, t.logins.c.expires_at)
                               .join(t.logins, t.logins.c.user_id == t.users.c.id)
                               .where(t.logins.c.token_hash == _token_hash(token))).first()
        if row is None or row.expires_at < t.utcnow():
            return None
        return _user(row), row.csrf

    def logout(self, token: str, user: User) -> None:
        with self.transaction() as conn:
            conn.execute(t.logins.delete().where(t.logins.c.token_hash == _token_hash(token)))
            self._event(conn, user, "logout", user.name, {})

    # ---- the queue's view (called inside a serialized transaction) ----------------------------------

    def open_assignment(self, conn: Connection, user_id: int) -> str | None:
        """The item served to this user and not answered yet (a reload shows it again)."""
        return conn.execute(select(t.assignments.c.item_id).where(
            t.assignments.c.user_id == user_id, t.assignments.c.judgement_id.is_(None))
            .order_by(t.assignments.c.served_at).limit(1)).scalar()

    def served_to(self, conn: Connection, user_id: int) -> set[str]:
        return set(conn.execute(select(t.assignments.c.item_id).where(t.assignments.c.user_id == user_id)).scalars())

    def vote_counts(self, conn: Connection, exclude_user: int, pending_after: datetime) -> dict[str, int]:
        """item -> votes of enabled annotators other than ``exclude_user`` + items on their screens now."""
        a = t.assignments.c
        counted = or_(and_(a.outcome.is_not(None), a.outcome != "skip"),
                      and_(a.judgement_id.is_(None), a.served_at > pending_after))
        q = (select(a.item_id, func.count()).join(t.users, t.users.c.id == a.user_id)
             .where(t.users.c.labels_disabled.is_(False), a.user_id != exclude_user, counted).group_by(a.item_id))
        return dict(conn.execute(q).all())

    def assign(self, conn: Connection, item_id: str, user_id: int) -> None:
        conn.execute(insert(t.assignments).values(item_id=item_id, user_id=user_id, served_at=t.utcnow()))

    def is_served(self, item_id: str, user_id: int) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(t.assignments.c.item_id).where(
                t.assignments.c.item_id == item_id, t.assignments.c.user_id == user_id)).first() is not None

    def progress(self, labels_per_item: int, user: User | None = None) -> dict[str, int]:
        """Non-gold items, items with enough votes, votes (enabled annotators, latest non-skip), mine."""
        a = t.assignments.c
        gold = {it.item_id for it in self.items() if it.gold is not None}
        with self.engine.connect() as conn:
            votes = dict(conn.execute(
                select(a.item_id, func.count()).join(t.users, t.users.c.id == a.user_id)
                .where(t.users.c.labels_disabled.is_(False), a.outcome.is_not(None), a.outcome != "skip")
                .group_by(a.item_id)).all())
            mine = 0 if user is None else conn.execute(select(func.count()).select_from(t.assignments).where(
                a.user_id == user.id, a.judgement_id.is_not(None))).scalar_one()
        votes = {k: v for k, v in votes.items() if k not in gold}
        return {"items": len(self.items()) - len(gold), "labelled": sum(v >= labels_per_item for v in votes.values()),
                "votes": sum(votes.values()), "mine": mine}

    # ---- judgements --------------------------------------------------------------------------------

    def submit(self, j: Judgement, user: User, client_key: str | None = None,
               origin: str = "web", require_served: bool = True) -> tuple[Judgement, bool]:
        """Store a judgement answering the item's assignment; returns (stored judgement, was it a retry).

        A retry (same ``client_key`` from the same user) returns the judgement stored the first time.
        ``require_served=False`` (imports, migration) creates the assignment when missing."""
        if j.outcome not in OUTCOMES:
            raise ValueError(f"outcome {j.outcome!r}: use one of {', '.join(OUTCOMES)}")
        try:
            return self._submit(j, user, client_key, origin, require_served), False
        except _Retry as retry:
            return retry.earlier, True
        except IntegrityError:
            if client_key is None:
                raise
            earlier = self.judgement_by_key(user, client_key)  # a concurrent retry won the race
            if earlier is None:
                raise
            return earlier, True

    def _submit(self, j: Judgement, user: User, client_key: str | None, origin: str,
                require_served: bool) -> Judgement:
        a = t.assignments.c
        with self.transaction() as conn:
            if client_key is not None:
                earlier = self._by_key(conn, user, client_key)
                if earlier is not None:
                    raise _Retry(earlier)
            served = conn.execute(select(a.served_at).where(a.item_id == j.item_id, a.user_id == user.id)).first()
            if served is None and require_served:
                raise NotServed(f"item {j.item_id!r} was not served to {user.name} (fix: submit items from /api/next)")
            now = t.utcnow()
            j.id = j.id or uuid.uuid4().hex
            created = _parse_time(j.time) or now
            j.time = t.iso(created)
            conn.execute(insert(t.judgements).values(
                id=j.id, item_id=j.item_id, user_id=user.id, outcome=j.outcome, shown_left=j.shown_left,
                corrections=[asdict(c) for c in j.corrections], ratings=j.ratings, unsafe=list(j.unsafe),
                comment=j.comment, seconds=j.seconds, served_at=served.served_at if served else None,
                created_at=created, client_key=client_key, origin=origin))
            values = {"outcome": j.outcome, "judgement_id": j.id, "submitted_at": created}
            if served is None:
                conn.execute(insert(t.assignments).values(item_id=j.item_id, user_id=user.id, served_at=created, **values))
            else:
                conn.execute(update(t.assignments).where(a.item_id == j.item_id, a.user_id == user.id).values(**values))
        return j

    def _by_key(self, conn: Connection, user: User, client_key: str) -> Judgement | None:
        row = conn.execute(self._judgement_query().where(t.judgements.c.user_id == user.id,
                                                         t.judgements.c.client_key == client_key)).first()
        return None if row is None else _judgement(row)

    def judgement_by_key(self, user: User, client_key: str) -> Judgement | None:
        with self.engine.connect() as conn:
            return self._by_key(conn, user, client_key)

    @staticmethod
    def _judgement_query():
        return select(t.judgements, t.users.c.name.label("annotator")).join(t.users, t.users.c.id == t.judgements.c.user_id)

    def judgements(self, include_disabled: bool = False) -> list[Judgement]:
        """Every judgement in submission order; those of annotators whose labels are disabled only on request."""
        q = self._judgement_query().order_by(t.judgements.c.seq)
        if not include_disabled:
            q = q.where(t.users.c.labels_disabled.is_(False))
        with self.engine.connect() as conn:
            return [_judgement(r) for r in conn.execute(q)]

    def judgement_rows(self) -> list[dict[str, Any]]:
        """Raw rows with server times and client keys (for the load/fault checks and audits)."""
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(self._judgement_query().order_by(t.judgements.c.seq))]

    def served_times(self) -> dict[tuple[str, str], tuple[datetime, datetime | None]]:
        """(item, annotator) -> (served at, latest answer at): the server-side time per item."""
        a = t.assignments.c
        with self.engine.connect() as conn:
            rows = conn.execute(select(a.item_id, t.users.c.name, a.served_at, a.submitted_at)
                                .join(t.users, t.users.c.id == a.user_id)).all()
        return {(r[0], r[1]): (r[2], r[3]) for r in rows}

    # ---- audit + model scores ----------------------------------------------------------------------

    @staticmethod
    def _event(conn: Connection, user: User | None, action: str, target: str, detail: dict[str, Any]) -> None:
        conn.execute(insert(t.events).values(at=t.utcnow(), user_id=user.id if user else None, action=action,
                                             target=target[: t.ITEM_ID_MAX], detail=detail))

    def event(self, user: User | None, action: str, target: str = "", detail: dict[str, Any] | None = None) -> None:
        with self.transaction() as conn:
            self._event(conn, user, action, target, detail or {})

    def events(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            q = (select(t.events, t.users.c.name.label("user")).outerjoin(t.users, t.users.c.id == t.events.c.user_id)
                 .order_by(t.events.c.id))
            return [dict(r._mapping) for r in conn.execute(q)]

    def set_scores(self, scores: dict[str, tuple[float, float]], version: int) -> None:
        with self.transaction() as conn:
            conn.execute(t.scores.delete())
            if scores:
                conn.execute(insert(t.scores), [{"item_id": k, "r_first": a, "r_second": b, "version": version}
                                                for k, (a, b) in scores.items()])

    def scores(self) -> tuple[dict[str, tuple[float, float]], int | None]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(t.scores)).all()
        return {r.item_id: (r.r_first, r.r_second) for r in rows}, (max(r.version for r in rows) if rows else None)

    def start_model_run(self, n_labels: int) -> int:
        with self.transaction() as conn:
            return conn.execute(insert(t.model_runs).values(started_at=t.utcnow(), n_labels=n_labels, status="running",
                                                            detail={})).inserted_primary_key[0]

    def finish_model_run(self, run_id: int, status: str, detail: dict[str, Any]) -> None:
        with self.transaction() as conn:
            conn.execute(update(t.model_runs).where(t.model_runs.c.id == run_id).values(
                finished_at=t.utcnow(), status=status, detail=detail))

    def model_runs(self) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(select(t.model_runs).order_by(t.model_runs.c.id))]


class _Retry(IntegrityError):
    """Raised inside the submit transaction when the client key was seen: roll back, answer the first one."""

    def __init__(self, earlier: Judgement) -> None:
        super().__init__("retry", None, Exception("retry"))
        self.earlier = earlier


def _parse_time(text: str) -> datetime | None:
    """ISO-8601 → naive UTC (a time without an offset is taken as UTC)."""
    if not text:
        return None
    d = datetime.fromisoformat(text.replace("Z", "+00:00"))  # noqa: FURB162 (3.10 cannot read "Z")
    return d if d.tzinfo is None else d.astimezone(timezone.utc).replace(tzinfo=None)  # noqa: UP017


def _judgement(row: Any) -> Judgement:
    return Judgement(row.item_id, row.annotator, row.outcome, row.shown_left,
                     [Correction(**c) for c in row.corrections], dict(row.ratings), list(row.unsafe), row.comment,
                     row.seconds, t.iso(row.created_at), row.id)
