"""SPA-VL (sqrti/SPA-VL): safety preference pairs over 6 harm domains / 13 categories / 53 subcategories.

Real layout (dataset card): train config ``image``, ``question``, ``chosen``, ``rejected``,
``image_name``; validation config adds ``class1``/``class2``/``class3`` (domain → category →
subcategory). The harm labels describe the *question*, not which answer is safe, so they go to
``meta["harm_classes"]`` (and ``meta["category"]`` = the finest one) rather than to SafetyLabels,
whose per-response safe/unsafe flags SPA-VL does not provide.
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import (
    Format,
    RowContext,
    RowProblem,
    first_image,
    register_format,
    require_str,
)
from vlalign.data.records import PreferenceRecord, Record

_CLASSES = ("class1", "class2", "class3")


def convert_spa_vl(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    meta: dict[str, Any] = {}
    classes = [row.get(k) for k in _CLASSES if row.get(k) is not None]
    for key in _CLASSES:
        if row.get(key) is not None and not isinstance(row[key], str):
            raise RowProblem(key, f"expected a harm class name, got {type(row[key]).__name__}")
    if classes:
        meta["harm_classes"], meta["category"] = classes, classes[-1]
    if row.get("image_name"):
        meta["image_name"] = row["image_name"]
    return [
        PreferenceRecord(
            str(row.get("id", ctx.default_id("spa_vl"))),
            first_image(row, ctx, ("image", "image_name")),
            require_str(row, "question"),
            require_str(row, "chosen"),
            require_str(row, "rejected"),
            meta=meta,
        )
    ]


def detect_spa_vl(keys: set[str]) -> bool:
    return {"question", "chosen", "rejected"} <= keys and bool(keys & {"image_name", *_CLASSES})


SPA_VL = register_format(
    Format(
        name="spa_vl",
        description="sqrti/SPA-VL: image, question, chosen, rejected, image_name | class1/2/3 harm labels",
        detect=detect_spa_vl,
        convert=convert_spa_vl,
        signature="question + chosen + rejected + one of image_name/class1/class2/class3",
    )
)
