"""The background learner: after N labels it trains a reward model on the majority-voted pairs, scores
every item, and the active queue then serves the item the new model is least sure about."""

from __future__ import annotations

import math
import time

from annotate_support import make_project

from vlalign.annotate.judgements import Judgement
from vlalign.annotate.learner import Learner
from vlalign.annotate.queue import uncertainty


def _judge(project, item_id: str, who: str, outcome: str) -> None:
    store = project.store
    store.submit(Judgement(item_id, who, outcome, "first"), store.user(who), require_served=False)


def test_retrains_every_n_labels_and_reranks_the_queue(tiny_model_dir, annotate_data, tmp_path):
    project = make_project(f"sqlite:///{tmp_path / 'a.sqlite'}", annotate_data[0], strategy="active",
                           learning=True)
    learner = Learner(project, tmp_path / "learner", str(tiny_model_dir("llava")), every=3, options=["max_steps=4"])
    assert project.queue.uncertainties() is None  # no model yet: the active queue covers at random
    learner.start()
    try:
        for item, outcome in (("p0", "first"), ("p1", "first"), ("p2", "second")):
            _judge(project, item, "ann", outcome)
            learner.notify()
        deadline = time.monotonic() + 300
        while not project.store.model_runs() or project.store.model_runs()[-1]["status"] == "running":
            assert time.monotonic() < deadline, "the learner did not finish a round in 300 s"
            time.sleep(0.2)
    finally:
        learner.stop()
    (run,) = project.store.model_runs()
    assert run["status"] == "ok", run["detail"]
    assert run["n_labels"] == 3 and run["detail"]["pairs"] == 3 and run["detail"]["items_scored"] == 6
    scores, version = project.store.scores()
    assert version == run["id"] and set(scores) == {f"p{k}" for k in range(6)}
    assert all(math.isfinite(a) and math.isfinite(b) for a, b in scores.values())
    # the queue re-ranks: bob (who has seen nothing) gets the item the new model is least sure about
    unc = {k: uncertainty(a, b) for k, (a, b) in scores.items()}
    bob = project.store.user("bob")
    assert project.queue.next_for(bob).item_id == min(unc, key=lambda k: (unc[k], int(k[1:])))


def test_a_round_with_too_few_pairs_is_skipped_and_recorded(annotate_data, tmp_path):
    project = make_project(f"sqlite:///{tmp_path / 'a.sqlite'}", annotate_data[0], strategy="active", learning=True)
    _judge(project, "p0", "ann", "first")
    out = Learner(project, tmp_path / "learner", "no-model-needed", every=1).run_once()
    assert out["status"] == "skipped" and project.store.model_runs()[0]["status"] == "skipped"
    assert project.store.scores() == ({}, None)
