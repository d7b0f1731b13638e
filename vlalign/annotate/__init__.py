"""Human feedback collection: a web app in which a labelling team compares VLM outputs, and the tools around it.

- :mod:`~vlalign.annotate.items`      pairs to judge, from preference / ranked candidate files
- :mod:`~vlalign.annotate.store`      the project database (SQLAlchemy; SQLite WAL or PostgreSQL)
- :mod:`~vlalign.annotate.queue`      next item: random, overlap (round-robin), active (uncertainty), gold
- :mod:`~vlalign.annotate.agreement`  raw agreement, Cohen's and Fleiss' kappa, Krippendorff's alpha
- :mod:`~vlalign.annotate.quality`    gold accuracy, agreement with the majority, time per item, weights
- :mod:`~vlalign.annotate.export`     majority vote → canonical PreferenceRecord / RankedRecord
- :mod:`~vlalign.annotate.interop`    Label Studio tasks / Argilla records out, their annotations in
- :mod:`~vlalign.annotate.learner`    the background reward model that re-ranks the active queue
- :mod:`~vlalign.annotate.app`        the web app (Flask), served by waitress (:mod:`~vlalign.annotate.server`)

The names below are loaded on first use: `vlalign --help` imports this package to register its
commands and must not pay for SQLAlchemy, Flask or numpy.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "agreement_report": "agreement", "cohen_kappa": "agreement", "fleiss_kappa": "agreement",
    "krippendorff_alpha": "agreement", "export_preferences": "export", "export_ranked": "export",
    "majority": "export", "write_export": "export", "PairItem": "items", "Correction": "judgements",
    "Judgement": "judgements", "STRATEGIES": "queue", "ItemQueue": "queue", "reward_source_scorer": "queue",
    "scores_file_scorer": "queue", "uncertainty": "scoring", "Project": "session", "open_project": "session",
    "Store": "store", "User": "store",
}
__all__ = [  # noqa: RUF022 (grouped by module, as _EXPORTS)
    "agreement_report", "cohen_kappa", "fleiss_kappa", "krippendorff_alpha", "export_preferences", "export_ranked",
    "majority", "write_export", "PairItem", "Correction", "Judgement", "STRATEGIES", "ItemQueue",
    "reward_source_scorer", "scores_file_scorer", "uncertainty", "Project", "open_project", "Store", "User",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'vlalign.annotate' has no attribute {name!r}")
    return getattr(importlib.import_module(f"vlalign.annotate.{_EXPORTS[name]}"), name)
