"""VLFeedback (MMInstruction/VLFeedback): 4 model completions per prompt, GPT-4V ratings on 3 aspects.

Real layout (dataset card): ``id``, ``prompt``, ``models`` (list), ``img_path``, ``completions`` — a
list of ``{"model", "response", "annotations": {"Helpfulness" | "Visual Faithfulness" |
"Ethical Considerations": {"Rating": "1".."5" (a string), "Rationale": ...}}}``. Loaded through
``datasets`` from the hub's Parquet (the card declares ``completions`` as a ``sequence`` of structs), the
same field arrives column-wise — ``{"model": [...], "response": [...], "annotations": [...]}`` — and is
turned back into the list; an ``image`` column (Image feature) is used when present, else ``img_path``.

Pairing rule (format ``vlfeedback``), chosen to be simple and stated once:
1. a completion's score is the MEAN of its numeric aspect ratings (``aspects`` option: which ones;
   default all three). Ratings that are empty / "N/A" are left out of the mean, not counted as 0;
2. chosen = the highest score, rejected = the lowest (ties: the earlier completion wins chosen, the
   later one is rejected);
3. the pair is kept only if score(chosen) - score(rejected) >= ``min_gap`` (default 1.0); otherwise the
   row is *skipped* and listed in the report — a near-tie is label noise, not a preference.
The per-aspect ratings of both answers go to ``ratings`` and the gap to ``margin``.
Format ``vlfeedback_ranked`` keeps every rated completion as a RankedRecord ordered best first.
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import (
    Format,
    RowContext,
    RowProblem,
    RowSkipped,
    first_image,
    list_of_dicts,
    parse_number,
    register_format,
    require_str,
)
from vlalign.data.records import PreferenceRecord, RankedRecord, Record

ASPECTS = {
    "Helpfulness": "helpfulness",
    "Visual Faithfulness": "visual_faithfulness",
    "Ethical Considerations": "ethical_considerations",
}
_MISSING = {"", "n/a", "na", "none", "null"}


def parse_rating(value: Any, where: str) -> float | None:
    """A rating ("4", 4, {"Rating": "4"}) → float; missing → None; anything else (text, NaN, inf) → RowProblem."""
    if isinstance(value, dict):
        value = value.get("Rating")
    if value is None or (isinstance(value, str) and value.strip().lower() in _MISSING):
        return None
    try:
        return parse_number(value, where)
    except RowProblem as p:
        raise RowProblem(where, f"rating {p.reason}", "ratings are numbers 1-5 or N/A") from None


def completion_ratings(comp: dict[str, Any], i: int) -> dict[str, float]:
    """One completion's annotations → {aspect: rating} (canonical snake_case aspect names)."""
    ann = comp.get("annotations") or {}
    if not isinstance(ann, dict):
        raise RowProblem(f"completions[{i}].annotations", f"expected an object, got {type(ann).__name__}")
    out = {}
    for name, value in ann.items():
        if name not in ASPECTS:
            raise RowProblem(
                f"completions[{i}].annotations", f"unknown aspect {name!r}", f"aspects are {', '.join(ASPECTS)}"
            )
        rating = parse_rating(value, f"completions[{i}].annotations.{name}")
        if rating is not None:
            out[ASPECTS[name]] = rating
    return out


def mean_score(ratings: dict[str, float], aspects: list[str] | None) -> float | None:
    """Mean over the chosen aspects that are present; None when none is."""
    vals = [v for k, v in ratings.items() if aspects is None or k in aspects]
    return sum(vals) / len(vals) if vals else None


def completions_of(row: dict[str, Any]) -> list[Any]:
    """``completions`` as a list (the hub's ``Sequence`` of structs arrives column-wise as a dict)."""
    comps = list_of_dicts(row.get("completions"), "completions")
    if not isinstance(comps, list) or not comps:
        raise RowProblem("completions", "missing or not a non-empty list", "give a list of {model, response, annotations}")
    for i, comp in enumerate(comps):
        if not isinstance(comp, dict):
            raise RowProblem(f"completions[{i}]", f"expected an object {{model, response, annotations}}, got "
                             f"{type(comp).__name__} {comp!r:.40}", "give each completion as an object")
    return comps


def _scored(row: dict[str, Any], ctx: RowContext) -> list[tuple[float, int, str, dict[str, float]]]:
    comps = completions_of(row)
    aspects = ctx.option("aspects", None)
    scored = []
    for i, comp in enumerate(comps):
        if not isinstance(comp.get("response"), str):
            raise RowProblem(f"completions[{i}].response", "missing or not a string")
        ratings = completion_ratings(comp, i)
        score = mean_score(ratings, aspects)
        if score is not None:
            scored.append((score, i, comp["response"], ratings))
    if len(scored) < 2:
        raise RowSkipped(f"only {len(scored)} completion(s) have ratings; need 2 to form a preference")
    return scored


def _common(row: dict[str, Any], ctx: RowContext) -> tuple[str, list, str, dict[str, Any]]:
    rid = str(row.get("id", ctx.default_id("vlfeedback")))
    images = first_image(row, ctx, ("image", "img_path"))
    meta = {"models": [c.get("model") for c in completions_of(row)]}
    return rid, images, require_str(row, "prompt"), meta


def convert_vlfeedback(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    rid, images, prompt, meta = _common(row, ctx)
    scored = _scored(row, ctx)
    best = max(scored, key=lambda s: (s[0], -s[1]))  # highest score, earliest on ties
    worst = min(scored, key=lambda s: (s[0], -s[1]))  # lowest score, latest on ties
    gap = best[0] - worst[0]
    min_gap = float(ctx.option("min_gap", 1.0))
    if gap < min_gap:
        raise RowSkipped(f"rating gap {gap:.2f} < min_gap {min_gap:g}")
    models = meta.get("models") or []
    meta["chosen_model"], meta["rejected_model"] = models[best[1]], models[worst[1]]
    rec = PreferenceRecord(rid, images, prompt, best[2], worst[2], margin=gap, meta=meta)
    rec.ratings = {"chosen": best[3], "rejected": worst[3]}
    return [rec]


def convert_vlfeedback_ranked(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    rid, images, prompt, meta = _common(row, ctx)
    ordered = sorted(_scored(row, ctx), key=lambda s: (-s[0], s[1]))  # best first, stable on ties
    meta["ratings"] = [s[3] for s in ordered]
    return [RankedRecord(rid, images, prompt, [s[2] for s in ordered], [s[0] for s in ordered], meta=meta)]


def detect_vlfeedback(keys: set[str]) -> bool:
    return {"prompt", "completions"} <= keys


_OPTIONS = {"aspects": "which aspects to average (default all three)", "min_gap": "minimum mean-rating gap (1.0)"}
VLFEEDBACK = register_format(
    Format("vlfeedback", "MMInstruction/VLFeedback → best-vs-worst pairs by mean rating (min_gap)",
           detect_vlfeedback, convert_vlfeedback, _OPTIONS, signature="prompt + completions")
)
# Same fields, so never auto-detected: ask for it by name.
VLFEEDBACK_RANKED = register_format(
    Format("vlfeedback_ranked", "MMInstruction/VLFeedback → RankedRecord (all rated completions, best first)",
           lambda keys: False, convert_vlfeedback_ranked, {"aspects": _OPTIONS["aspects"]},
           signature="never auto-detected (same fields as vlfeedback)")
)
