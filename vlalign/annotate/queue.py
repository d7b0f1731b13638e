"""Which item an annotator sees next: ``random``, ``overlap`` (round-robin) or ``active`` learning.

Every strategy chooses among the *candidates*: items not served to this annotator yet that still need
labels (fewer than ``labels_per_item`` votes from annotators whose labels count, counting items
currently on someone else's screen). Strategies are small pure functions registered by name in :data:`STRATEGIES`:

- ``random``  — coverage first: uniformly among the candidates with the fewest labels.
- ``overlap`` — everybody walks the items in the same (file) order, so each item collects
  ``labels_per_item`` votes from different people: the data that inter-annotator agreement needs.
- ``active``  — uncertainty sampling: given any scorer of the two responses (a learned reward model,
  the policy's implicit reward β·log π/π_ref, precomputed scores), show the pair whose predicted
  preference is closest to a coin flip, |σ(r_first − r_second) − 0.5| smallest. Labels where the
  model is already sure add little; labels where it is unsure move it most.
"""

from __future__ import annotations

import json
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from vlalign.annotate.items import PairItem
from vlalign.annotate.schema import utcnow
from vlalign.annotate.scoring import uncertainty
from vlalign.annotate.store import Store, User
from vlalign.registry import Registry

# A scorer maps items to (reward of first response, reward of second response), one pair per item.
PairScorer = Callable[[Sequence[PairItem]], Sequence[tuple[float, float]]]

PENDING_SECONDS = 600.0  # an item handed out but not answered blocks others this long at most


@dataclass
class QueueContext:
    """What a strategy may look at; it must not change anything."""

    annotator: str
    counts: dict[str, int]  # item_id -> votes (+ items pending on other screens)
    order: dict[str, int]  # item_id -> position in the file (the tie-break everywhere)
    rng: random.Random
    uncertainty: Callable[[PairItem], float] | None = None


Strategy = Callable[[list[PairItem], QueueContext], PairItem]
STRATEGIES: Registry[Strategy] = Registry("annotation queue strategy")


@STRATEGIES.register("random")
def pick_random(candidates: list[PairItem], ctx: QueueContext) -> PairItem:
    fewest = min(ctx.counts[it.item_id] for it in candidates)
    pool = [it for it in candidates if ctx.counts[it.item_id] == fewest]
    return ctx.rng.choice(pool)


@STRATEGIES.register("overlap", "round_robin")
def pick_overlap(candidates: list[PairItem], ctx: QueueContext) -> PairItem:
    return min(candidates, key=lambda it: ctx.order[it.item_id])


@STRATEGIES.register("active", "uncertainty")
def pick_active(candidates: list[PairItem], ctx: QueueContext) -> PairItem:
    if ctx.uncertainty is None:  # no model yet (the learner has not trained one): cover at random
        return pick_random(candidates, ctx)
    return min(candidates, key=lambda it: (ctx.uncertainty(it), ctx.order[it.item_id]))


@dataclass
class ItemQueue:
    """Hands out items to annotators. State lives in the database (assignments), so it survives restarts
    and serves several server processes; each claim is one serialized transaction.

    Gold items (known answers) are not part of the coverage: every ``gold_every``-th item an annotator
    gets is an unseen gold item, so accuracy on gold is measured on everyone, all along the session.
    ``active`` ranks by the scores of the background reward model (:mod:`vlalign.annotate.learner`)
    when there are any, else by ``scorer``; with neither yet (``learning``, before the first model)
    it serves like ``random``.
    """

    store: Store
    strategy: str = "random"
    labels_per_item: int = 1
    seed: int = 0
    scorer: PairScorer | None = None
    gold_every: int = 0
    learning: bool = False  # a background learner will provide scores
    _uncertainty: dict[str, float] | None = None
    _version: int | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._pick = STRATEGIES.get(self.strategy)  # unknown names fail now, with a did-you-mean
        if self.labels_per_item < 1:
            raise ValueError(f"labels_per_item must be >= 1, got {self.labels_per_item}")
        if self.gold_every < 0 or self.gold_every == 1:
            raise ValueError(f"gold_every must be 0 (no gold) or >= 2, got {self.gold_every}")
        if self.strategy in ("active", "uncertainty") and self.scorer is None and not self.learning:
            raise ValueError("strategy 'active' needs a scorer (or the background learner)")

    @property
    def items(self) -> list[PairItem]:
        """The items to cover (gold items excluded)."""
        return [it for it in self.store.items() if it.gold is None]

    def get(self, item_id: str) -> PairItem | None:
        return {it.item_id: it for it in self.store.items()}.get(item_id)

    def rescore(self) -> None:
        """Forget cached scores (the learner calls it after writing a new model's scores)."""
        with self._lock:
            self._uncertainty = None

    def uncertainties(self) -> dict[str, float] | None:
        """item_id -> |σ(Δr) − 0.5| from the newest model scores, else the scorer; None when neither exists."""
        learned, version = self.store.scores() if self.learning else ({}, None)
        if self._uncertainty is not None and version == self._version:
            return self._uncertainty
        items = self.items
        if learned:
            scores = [learned.get(it.item_id, (0.0, 0.0)) for it in items]
        elif self.scorer is not None:
            scores = list(self.scorer(items))
            if len(scores) != len(items):
                raise ValueError(f"scorer returned {len(scores)} score pairs for {len(items)} items")
        else:
            return None
        self._uncertainty = {it.item_id: uncertainty(float(a), float(b)) for it, (a, b) in zip(items, scores)}
        self._version = version
        return self._uncertainty

    def next_for(self, user: User) -> PairItem | None:
        """The item on ``user``'s screen (served, not answered), else a newly claimed one; None when done."""
        by_id = {it.item_id: it for it in self.store.items()}
        unc = self.uncertainties() if self.strategy in ("active", "uncertainty") else None  # before the lock
        with self._lock, self.store.transaction(serialize=True) as conn:
            current = self.store.open_assignment(conn, user.id)
            if current is not None:
                return by_id[current]
            seen = self.store.served_to(conn, user.id)
            # Seeded per (annotator, progress): a resumed session continues the same sequence.
            rng = random.Random(f"{self.seed}:{user.name}:{len(seen)}")
            item = self._gold_for(seen, rng) or self._regular_for(conn, user, seen, rng, unc)
            if item is not None:
                self.store.assign(conn, item.item_id, user.id)
            return item

    def _gold_for(self, seen: set[str], rng: random.Random) -> PairItem | None:
        if not self.gold_every or (len(seen) + 1) % self.gold_every:
            return None
        unseen = [it for it in self.store.items() if it.gold is not None and it.item_id not in seen]
        return rng.choice(unseen) if unseen else None

    def _regular_for(self, conn, user: User, seen: set[str], rng: random.Random,
                     unc: dict[str, float] | None) -> PairItem | None:
        pending_after = utcnow() - timedelta(seconds=PENDING_SECONDS)
        votes = self.store.vote_counts(conn, exclude_user=user.id, pending_after=pending_after)
        items = self.items
        counts = {it.item_id: votes.get(it.item_id, 0) for it in items}
        candidates = [it for it in items if it.item_id not in seen and counts[it.item_id] < self.labels_per_item]
        if not candidates:
            return None
        order = {it.item_id: k for k, it in enumerate(items)}
        ctx = QueueContext(user.name, counts, order, rng, (lambda it: unc[it.item_id]) if unc else None)
        return self._pick(candidates, ctx)

    def progress(self, user: User | None = None) -> dict[str, int]:
        return self.store.progress(self.labels_per_item, user)


# ---- scorers --------------------------------------------------------------------------------------


def reward_source_scorer(source, image_path: Callable[[str], str]) -> PairScorer:
    """Adapt any :class:`vlalign.rewards.base.RewardSource` (learned RM, CLIP, judge, rules) to a PairScorer;
    ``image_path`` maps an item's image reference to a file (e.g. :meth:`Store.image_files`)."""
    from vlalign.rewards.base import Sample

    def score(items: Sequence[PairItem]) -> list[tuple[float, float]]:
        samples = [Sample([image_path(p) for p in it.images], it.prompt, it.responses[k], it.meta)
                   for k in (0, 1) for it in items]
        r = source.score(samples).rewards.detach().float().tolist()  # (2N,): all firsts, then all seconds
        n = len(items)
        return list(zip(r[:n], r[n:]))

    return score


def scores_file_scorer(path: str | Path) -> PairScorer:
    """Precomputed scores: JSONL rows ``{"item_id": ..., "scores": [r_first, r_second]}``.

    The way to bring a scorer that is too heavy to run inside the web server, e.g. the policy's
    implicit reward β·(log π − log π_ref) computed offline on a GPU.
    """
    table: dict[str, tuple[float, float]] = {}
    with Path(path).open(encoding="utf-8") as fh:
        for n, line in enumerate(fh):
            if not line.strip():
                continue
            row = json.loads(line)
            s = row.get("scores")
            if "item_id" not in row or not isinstance(s, list) or len(s) != 2:
                raise ValueError(f"{path}: row {n}: need {{'item_id': str, 'scores': [r_first, r_second]}}, got {row}")
            table[str(row["item_id"])] = (float(s[0]), float(s[1]))

    def score(items: Sequence[PairItem]) -> list[tuple[float, float]]:
        missing = [it.item_id for it in items if it.item_id not in table]
        if missing:
            raise ValueError(f"{path}: no scores for {len(missing)} items, e.g. {missing[:3]} (fix: add rows for them)")
        return [table[it.item_id] for it in items]

    return score
