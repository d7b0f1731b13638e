"""The project database on SQLite and PostgreSQL: schema = migrations, judgements, retries, the queue
strategies, gold items, disabled annotators, accounts, and the migration of JSONL sessions."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from annotate_support import PASSWORD

from vlalign.annotate.database import current_revision, head_revision
from vlalign.annotate.items import PairItem, save_items
from vlalign.annotate.judgements import Correction, Judgement
from vlalign.annotate.migrate import migrate_jsonl_session
from vlalign.annotate.queue import ItemQueue, scores_file_scorer
from vlalign.annotate.schema import metadata
from vlalign.annotate.store import NotServed, Store


def _items(n: int, gold: int = 0) -> list[PairItem]:
    out = [PairItem(f"p{k}", f"p{k}", [], "q?", (f"good {k}", f"bad {k}")) for k in range(n)]
    out += [PairItem(f"g{k}", f"g{k}", [], "q?", (f"gold good {k}", f"gold bad {k}"), gold="first") for k in range(gold)]
    return out


def _store(url: str, n: int = 4, gold: int = 0, users=("a", "b", "c")) -> Store:
    store = Store.open(url)
    store.create_project("fp", {"secret": "s"})
    store.add_items(_items(n, gold), {})
    for u in users:
        store.add_user(u, "annotator", password=PASSWORD)
    return store


def _label(queue: ItemQueue, name: str, outcome: str = "first") -> str | None:
    user = queue.store.user(name)
    item = queue.next_for(user)
    if item is None:
        return None
    queue.store.submit(Judgement(item.item_id, name, outcome, "first"), user)
    return item.item_id


def test_migrations_create_exactly_the_schema(db_url):
    store = Store.open(db_url)
    assert current_revision(store.engine) == head_revision() == "0001"
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diff == []  # the Alembic migration and schema.py describe the same tables, columns, keys
    Store.open(db_url)  # upgrading again is a no-op


def test_judgement_round_trip_revision_and_retry(db_url):
    store = _store(db_url)
    q = ItemQueue(store, "overlap")
    a = store.user("a")
    assert q.next_for(a).item_id == "p0"
    j, retry = store.submit(Judgement("p0", "a", "first", "second", [Correction("second", 0, 3, "The", "object")],
                                      {"second": {"correctness": 2}}, ["second"], "ok", 4.5), a, client_key="key-00001")
    assert not retry and j.id and j.time.endswith("+00:00")
    again, retry = store.submit(Judgement("p0", "a", "tie", "second"), a, client_key="key-00001")
    assert retry and again.id == j.id and again.outcome == "first"  # a retried POST is answered, not stored
    store.submit(Judgement("p0", "a", "tie", "second"), a)  # a changed mind is a new judgement
    fresh = Store.open(db_url)  # a restarted server
    got = fresh.judgements()
    assert [x.outcome for x in got] == ["first", "tie"]
    assert got[0] == j  # every field survives, corrections as dataclasses
    with pytest.raises(ValueError, match="outcome"):
        store.submit(Judgement("p0", "a", "left", "first"), a)


def test_submit_needs_an_item_served_to_that_user(db_url):
    store = _store(db_url)
    q = ItemQueue(store, "overlap")
    assert q.next_for(store.user("a")).item_id == "p0"
    with pytest.raises(NotServed, match="not served to b"):
        store.submit(Judgement("p0", "b", "first", "first"), store.user("b"))
    assert store.judgements() == []


def test_next_is_stable_until_answered(db_url):
    store = _store(db_url)
    q = ItemQueue(store, "random", seed=1)
    a = store.user("a")
    first = q.next_for(a)
    assert q.next_for(a) == first  # a reload shows the same item, nothing new is reserved
    assert q.progress(a) == {"items": 4, "labelled": 0, "votes": 0, "mine": 0}


def test_random_covers_each_item_once_across_annotators(db_url):
    store = _store(db_url, n=6)
    q = ItemQueue(store, "random", labels_per_item=1, seed=3)
    first_a, first_b = q.next_for(store.user("a")), q.next_for(store.user("b"))
    assert first_a.item_id != first_b.item_id  # an item on a's screen is not handed to b as well
    got = [x for _ in range(4) for x in (_label(q, "a"), _label(q, "b")) if x]
    assert sorted(got) == [f"p{k}" for k in range(6)]  # every item exactly once
    assert _label(q, "a") is None


def test_overlap_gives_each_item_two_votes_and_disabled_labels_reopen_items(db_url):
    store = _store(db_url, n=3)
    q = ItemQueue(store, "overlap", labels_per_item=2)
    assert [_label(q, "a") for _ in range(3)] == [_label(q, "b") for _ in range(3)] == ["p0", "p1", "p2"]
    assert _label(q, "c") is None  # everything has its 2 votes
    assert q.progress() == {"items": 3, "labelled": 3, "votes": 6, "mine": 0}
    store.set_labels_disabled("b", True, store.user("a"))
    assert q.progress()["votes"] == 3 and _label(q, "c") == "p0"  # b's votes no longer count
    assert {j.annotator for j in store.judgements()} == {"a", "c"}
    assert len(store.judgements(include_disabled=True)) == 7
    assert store.events()[-1]["action"] == "labels.disable" and store.events()[-1]["user"] == "a"


def test_active_picks_most_uncertain_pair(db_url, tmp_path):
    store = _store(db_url)
    f = tmp_path / "scores.jsonl"
    scores = {"p0": (3.0, 0.0), "p1": (0.2, 0.0), "p2": (-1.0, 0.5), "p3": (0.0, -0.1)}
    # |sigma(d) - 0.5| with d = r_first - r_second:
    #   p0 d=3.0 -> 0.4526, p1 d=0.2 -> 0.0498, p2 d=-1.5 -> 0.3176, p3 d=0.1 -> 0.0250
    f.write_text("".join(json.dumps({"item_id": k, "scores": list(v)}) + "\n" for k, v in scores.items()))
    q = ItemQueue(store, "active", scorer=scores_file_scorer(f))
    assert [_label(q, "a") for _ in range(4)] == ["p3", "p1", "p2", "p0"]
    with pytest.raises(ValueError, match="needs a scorer"):
        ItemQueue(store, "active")
    with pytest.raises(KeyError, match="Did you mean 'active'"):
        ItemQueue(store, "activ")
    # scores written by the background learner take over from the static scorer
    store.set_scores({"p0": (0.0, 0.0), "p1": (5.0, 0.0), "p2": (5.0, 0.0), "p3": (5.0, 0.0)}, version=1)
    learned = ItemQueue(store, "active", labels_per_item=2, learning=True)
    assert _label(learned, "b") == "p0"


def test_gold_items_mixed_into_every_queue(db_url):
    store = _store(db_url, n=6, gold=2)
    q = ItemQueue(store, "overlap", labels_per_item=3, gold_every=3)
    seq = [_label(q, "a") for _ in range(8)]
    # every 3rd item is gold while unseen gold is left: positions 3 and 6; then regular items only
    assert [s.startswith("g") for s in seq] == [False, False, True, False, False, True, False, False]
    assert q.progress()["items"] == 6  # gold items are not part of the coverage
    assert _label(q, "a") is None


def test_accounts_passwords_invites_logins(db_url):
    store = _store(db_url, users=("a",))
    assert store.check_password("a", PASSWORD).name == "a"
    assert store.check_password("a", "wrong password") is None and store.check_password("nobody", PASSWORD) is None
    token = store.add_user("new", "reviewer")
    with store.engine.connect() as conn:
        stored = [dict(r._mapping) for r in conn.exec_driver_sql("SELECT name, password_hash, invite_hash FROM users")]
    assert all(token not in json.dumps(r) for r in stored)  # only hashes are stored
    assert stored[0]["password_hash"].startswith("scrypt$1024$8$1$") and PASSWORD not in json.dumps(stored)
    with pytest.raises(ValueError, match="8 to 256"):
        store.redeem_invite(token, "short")
    assert store.redeem_invite("made-up", "long enough pw") is None
    assert store.redeem_invite(token, "long enough pw").name == "new"
    assert store.redeem_invite(token, "long enough pw") is None  # one use only
    assert store.check_password("new", "long enough pw").role == "reviewer"
    with pytest.raises(ValueError, match="exists already"):
        store.add_user("a", "annotator")
    with pytest.raises(ValueError, match="role"):
        store.add_user("x", "superuser")
    cookie, csrf = store.create_login(store.user("a"))
    user, csrf2 = store.login(cookie)
    assert user.name == "a" and csrf2 == csrf and store.login(cookie + "x") is None
    store.logout(cookie, user)
    assert store.login(cookie) is None


def test_migrate_jsonl_session(db_url, annotate_data, tmp_path):
    from vlalign.data.validate import load_records

    old = tmp_path / "old"
    old.mkdir()
    (old / "images").mkdir()
    records = load_records(annotate_data[0]).records[:3]
    items = []
    for r in records:
        src = r.images[0]
        (old / "images" / src.split("/")[-1]).write_bytes(Path(src).read_bytes())
        items.append(PairItem(r.id, r.id, [f"images/{src.split('/')[-1]}"], r.prompt, (r.chosen, r.rejected),
                              ("chosen", "rejected")))
    save_items(items, old)
    lines = [Judgement("p0", "ann", "first", "second", time="2026-01-01T10:00:00.000+00:00", id="j1"),
             Judgement("p1", "bob", "second", "first", [Correction("first", 0, 3, "A", None)], time="2026-01-01T10:01:00.000+00:00", id="j2"),
             Judgement("p0", "ann", "tie", "second", time="2026-01-01T10:02:00.000+00:00", id="j3")]
    text = "".join(json.dumps(asdict(j)) + "\n" for j in lines) + '{"item_id": "p2", "annot'  # torn last line
    (old / "annotations.jsonl").write_text(text)
    (old / "session.json").write_text(json.dumps({"strategy": "overlap", "labels_per_item": 2, "seed": 4}))
    store = Store.open(db_url)
    report = migrate_jsonl_session(old, store)
    assert (report.items, report.judgements, report.torn_lines) == (3, 3, [4]) and set(report.invites) == {"ann", "bob"}
    got = store.judgements()
    assert [(j.id, j.annotator, j.outcome) for j in got] == [("j1", "ann", "first"), ("j2", "bob", "second"), ("j3", "ann", "tie")]
    assert got[1].corrections == [Correction("first", 0, 3, "A", None)] and got[0].time == "2026-01-01T10:00:00.000+00:00"
    assert store.settings()["seed"] == 4 and store.image(store.items()[0].images[0])[1][:4] == b"\x89PNG"
    assert migrate_jsonl_session(old, store).skipped_existing == 3  # re-running adds nothing
    assert len(store.judgements()) == 3
