"""Convert a labelling session from before the database (items.jsonl + annotations.jsonl) into a project.

Everything is kept: item ids and texts (so the fingerprint matches the original data file), images
(read from the folder, stored by hash), every judgement with its id, time and layout, in file order
(so "the latest counts" keeps meaning the same). Each annotator name becomes an account with an invite
token (the old tool had no passwords). Re-running skips judgements already imported (by id).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from vlalign.annotate.items import image_bytes, items_fingerprint
from vlalign.annotate.legacy import read_legacy_session
from vlalign.annotate.schema import iso, utcnow
from vlalign.annotate.store import Store


@dataclass
class MigrationReport:
    items: int = 0
    judgements: int = 0
    skipped_existing: int = 0
    torn_lines: list[int] = field(default_factory=list)
    invites: dict[str, str] = field(default_factory=dict)  # new account -> one-time invite token


def migrate_jsonl_session(folder: str | Path, store: Store) -> MigrationReport:
    legacy = read_legacy_session(folder)
    report = MigrationReport(torn_lines=legacy.bad_lines)
    fp = items_fingerprint(legacy.items)
    old = store.settings()
    if old is not None and old["fingerprint"] != fp:
        raise ValueError(f"the database already holds a project with other items than {folder} (fix: use a new database)")
    if old is None:
        blobs: dict[str, bytes] = {}
        for it in legacy.items:
            hashes = []
            for rel in it.images:
                data = image_bytes(legacy.dir / rel)
                sha = hashlib.sha256(data).hexdigest()
                blobs.setdefault(sha, data)
                hashes.append(sha)
            it.images = hashes
        s = legacy.settings
        settings = {"secret": secrets.token_hex(16), "created": s.get("created") or iso(utcnow()), "data": s.get("data"),
                    "strategy": s.get("strategy", "random"), "labels_per_item": s.get("labels_per_item", 1),
                    "seed": s.get("seed", 0), "aspects": s.get("aspects", ["correctness", "helpfulness"]),
                    "migrated_from": str(Path(folder).resolve())}
        store.create_project(fp, settings)
        report.items = store.add_items(legacy.items, blobs)
    known = {j.id for j in store.judgements(include_disabled=True)}
    users = {u.name: u for u in store.users()}
    for j in legacy.judgements:
        if j.id in known:
            report.skipped_existing += 1
            continue
        if j.annotator not in users:
            report.invites[j.annotator] = store.add_user(j.annotator, "annotator")
            users[j.annotator] = store.user(j.annotator)
        store.submit(j, users[j.annotator], origin="migrated", require_served=False)
        report.judgements += 1
    store.event(None, "migrate.jsonl", str(folder)[:200], {"judgements": report.judgements, "torn": report.torn_lines})
    return report
