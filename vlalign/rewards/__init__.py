"""Reward (and cost) sources behind one interface; importing this package registers them all.

See :mod:`vlalign.rewards.base` for the interface and :func:`vlalign.rewards.composite.build_source`
for building any source from a config entry. Heavy libraries (transformers) are imported inside the
sources that need them, so importing this package stays cheap.
"""

from __future__ import annotations

import importlib
import importlib.util

from vlalign.rewards.base import REWARD_SOURCES, JudgedSpan, RewardOutput, RewardSource, Sample
from vlalign.rewards.composite import NORMALIZERS, Composite, RewardSourceConfig, build_source

# Modules whose import registers sources. `shapes_rules` belongs to the Shapes benchmark and is
# registered when present.
_SOURCE_MODULES = ["generic_rules", "judge", "clip", "learned", "critique", "shapes_rules", "shapes_errors"]
for _mod in _SOURCE_MODULES:
    if importlib.util.find_spec(f"vlalign.rewards.{_mod}") is not None:
        importlib.import_module(f"vlalign.rewards.{_mod}")

__all__ = [
    "NORMALIZERS",
    "REWARD_SOURCES",
    "Composite",
    "JudgedSpan",
    "RewardOutput",
    "RewardSource",
    "RewardSourceConfig",
    "Sample",
    "build_source",
]
