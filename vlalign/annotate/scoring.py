"""The uncertainty rule of active learning, on its own (no database, no web stack): the labelling app's
active queue and ``vlalign experiment active-learning`` both rank pairs by it."""

from __future__ import annotations

import math


def uncertainty(r_first: float, r_second: float) -> float:
    """|σ(r_first − r_second) − 0.5|: 0 = the scorer has no idea, 0.5 = it is certain (Bradley–Terry)."""
    return abs(1.0 / (1.0 + math.exp(-(r_first - r_second))) - 0.5)
