"""Public-format adapters, picked by name from :data:`FORMATS` or auto-detected from field names.

Adding a format = one module that calls :func:`register_format`; nothing else changes.
"""

from __future__ import annotations

from collections.abc import Iterable

from vlalign.data.formats import (  # noqa: F401  (each module registers its format)
    beavertails_v,
    canonical,
    llava_rlhf,
    mm_rlhf,
    rlaif_v,
    rlhf_v,
    sharegpt,
    spa_vl,
    trl,
    vlfeedback,
)
from vlalign.data.formats.base import FORMATS, Format, RowContext, RowProblem, RowSkipped, register_format


class FormatDetectionError(ValueError):
    """The format could not be told from the field names (none or several match)."""


def detect_format(keys: Iterable[str], source: str = "the data") -> str:
    """The one format whose ``detect`` accepts these field names; a clear error otherwise."""
    keyset = set(keys)
    matches = [name for name in FORMATS if FORMATS.get(name).detect(keyset)]
    if len(matches) == 1:
        return matches[0]
    fields = ", ".join(sorted(keyset)) or "(none)"
    if not matches:
        raise FormatDetectionError(
            f"{source}: cannot tell the data format from its fields [{fields}]. Pass --format with one of: "
            + "; ".join(f"{n} ({FORMATS.get(n).description})" for n in FORMATS)
        )
    raise FormatDetectionError(
        f"{source}: fields [{fields}] fit several formats ({', '.join(matches)}); "
        f"pass --format {matches[0]} (or another of them) to choose."
    )


def explain_format(keys: Iterable[str], source: str = "the data") -> tuple[str, str]:
    """(format, why): the detected format and the field rule that picked it, for logs and reports."""
    keyset = set(keys)
    name = detect_format(keyset, source)
    rule = FORMATS.get(name).signature or FORMATS.get(name).description
    return name, f"{name}: the only format whose rule matches the fields [{', '.join(sorted(keyset))}] ({rule})"


__all__ = ["FORMATS", "Format", "FormatDetectionError", "RowContext", "RowProblem", "RowSkipped",
           "detect_format", "explain_format", "register_format"]
