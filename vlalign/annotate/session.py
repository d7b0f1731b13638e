"""A labelling project: its database (items, images, accounts, judgements) + the settings it is served with.

``open_project(url, data=...)`` creates the project from a candidate file or resumes it; pointing an
existing project at *different* data is an error, because judgements refer to item ids and would
silently attach to other texts. Gold items (``gold=FILE``: preference rows whose ``chosen`` is the
known better answer) are added once and mixed into every annotator's queue.

The browser never sees item ids: it gets an opaque id per item (:meth:`Project.public_id`, an HMAC
with the project's secret), so neither an id pattern nor a counter can tell a gold item apart.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlalign.annotate.items import PairItem, build_items, items_fingerprint, public_id
from vlalign.annotate.queue import ItemQueue, PairScorer
from vlalign.annotate.schema import iso, utcnow
from vlalign.annotate.store import Store

DEFAULT_ASPECTS = ("correctness", "helpfulness")


@dataclass
class Project:
    store: Store
    queue: ItemQueue
    seed: int = 0
    aspects: tuple[str, ...] = DEFAULT_ASPECTS
    settings: dict[str, Any] = field(default_factory=dict)
    _public: dict[str, str] | None = None

    @property
    def items(self) -> list[PairItem]:
        return self.queue.items

    def public_id(self, item_id: str) -> str:
        return public_id(self.settings["secret"], item_id)

    def by_public_id(self, public: str) -> PairItem | None:
        if self._public is None or len(self._public) != len(self.store.items()):
            self._public = {self.public_id(it.item_id): it.item_id for it in self.store.items()}
        item_id = self._public.get(public)
        return None if item_id is None else self.queue.get(item_id)


def load_candidates(data: str | Path, on_bad_rows: str = "error", report: Path | None = None,
                    gold: bool = False) -> tuple[list[PairItem], dict[str, bytes], int]:
    """Items of every valid candidate row (+ image bytes by hash), and how many rows were bad."""
    from vlalign.data.validate import load_records

    # "error" raises DataError naming file/row/field; "skip" keeps the good rows and writes the full list
    result = load_records(data, on_bad_rows=on_bad_rows, report_path=report)
    if not result.records:
        raise ValueError(f"{data}: no valid records to annotate")
    items, blobs = build_items(result.records, str(data))
    if gold:
        if any(it.n_source_responses != 2 or it.source_order != ("chosen", "rejected") for it in items):
            raise ValueError(f"{data}: gold items need preference rows (chosen = the known better answer)")
        for it in items:
            it.gold = "first"
    ids = [it.item_id for it in items]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{data}: duplicate item ids; record ids must be unique")
    return items, blobs, result.n_bad_rows


def open_project(
    url: str,
    data: str | Path | None = None,
    strategy: str = "random",
    labels_per_item: int = 1,
    seed: int = 0,
    scorer: PairScorer | None = None,
    aspects: tuple[str, ...] | list[str] = DEFAULT_ASPECTS,
    on_bad_rows: str = "error",
    gold: str | Path | None = None,
    gold_every: int = 0,
    learning: bool = False,
    report: Path | None = None,
    make_scorer: Callable[[Store], PairScorer | None] | None = None,
) -> Project:
    """Create (with ``data``) or resume the project in the database at ``url``.

    ``make_scorer(store)`` builds the scorer once the store is open (a reward source needs the images)."""
    store = Store.open(url)
    old = store.settings()
    if data is not None:
        items, blobs, bad_rows = load_candidates(data, on_bad_rows, report)
        fp = items_fingerprint(items)
        if old is not None and old["fingerprint"] != fp:
            raise ValueError(
                f"{url} already holds a project for {old.get('data')} with different items; judgements refer "
                "to item ids (fix: use a new --out folder / database, or the original --data)")
        if old is None:
            store.create_project(fp, {"secret": secrets.token_hex(16), "created": iso(utcnow())})
            store.add_items(items, blobs)
            old = store.settings()
        old["bad_rows"] = bad_rows
        old["data"] = str(Path(data).resolve())
    elif old is None:
        raise ValueError(f"{url}: no project yet; start it with --data FILE")
    if gold is not None:
        gold_items, gold_blobs, _ = load_candidates(gold, gold=True)
        known = {it.item_id for it in store.items()}
        new = [it for it in gold_items if it.item_id not in known]
        if new:
            store.add_items(new, gold_blobs)
    settings = {**old, "strategy": strategy, "labels_per_item": labels_per_item, "seed": seed,
                "aspects": list(aspects), "gold_every": gold_every}
    settings.pop("fingerprint", None)
    store.update_settings(settings)
    if make_scorer is not None:
        scorer = make_scorer(store) or scorer
    queue = ItemQueue(store, strategy, labels_per_item, seed, scorer, gold_every, learning)
    return Project(store, queue, seed, tuple(aspects), {**settings, "fingerprint": old["fingerprint"]})
