"""Human feedback collection: a web app in which a labelling team compares VLM outputs, and the tools around it.

- :mod:`~vlalign.annotate.items`      pairs to judge, from preference / ranked candidate files
- :mod:`~vlalign.annotate.store`      the project database (SQLAlchemy; SQLite WAL or PostgreSQL)
- :mod:`~vlalign.annotate.queue`      next item: random, overlap (round-robin), active (uncertainty), gold
- :mod:`~vlalign.annotate.agreement`  raw agreement, Cohen's and Fleiss' kappa, Krippendorff's alpha
- :mod:`~vlalign.annotate.quality`    gold accuracy, agreement with the majority, time per item, weights
- :mod:`~vlalign.annotate.export`     majority vote → canonical PreferenceRecord / RankedRecord
- :mod:`~vlalign.annotate.interop`    Label Studio tasks / Argilla records out, their annotations in
- :mod:`~vlalign.annotate.app`        the web app (Flask; served by waitress, imported lazily)
"""

from vlalign.annotate.agreement import agreement_report, cohen_kappa, fleiss_kappa, krippendorff_alpha
from vlalign.annotate.export import export_preferences, export_ranked, majority, write_export
from vlalign.annotate.items import PairItem
from vlalign.annotate.judgements import Correction, Judgement
from vlalign.annotate.queue import (
    STRATEGIES,
    ItemQueue,
    reward_source_scorer,
    scores_file_scorer,
    uncertainty,
)
from vlalign.annotate.session import Project, open_project
from vlalign.annotate.store import Store, User

__all__ = [
    "STRATEGIES",
    "Correction",
    "ItemQueue",
    "Judgement",
    "PairItem",
    "Project",
    "Store",
    "User",
    "agreement_report",
    "cohen_kappa",
    "export_preferences",
    "export_ranked",
    "fleiss_kappa",
    "krippendorff_alpha",
    "majority",
    "open_project",
    "reward_source_scorer",
    "scores_file_scorer",
    "uncertainty",
    "write_export",
]
