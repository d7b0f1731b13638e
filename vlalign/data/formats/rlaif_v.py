"""RLAIF-V (openbmb/RLAIF-V-Dataset): AI-feedback preference pairs.

Real layout (dataset card): ``ds_name``, ``image`` ({bytes, path}), ``question``, ``chosen``,
``rejected``, ``origin_dataset``, ``origin_split`` (generator/labeler model and question type),
``idx`` (string), ``image_path``. The ``image`` struct wins; ``image_path`` is the fallback when the
bytes were stripped (e.g. a JSON export next to an images folder).
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import Format, RowContext, first_image, meta_from, register_format, require_str
from vlalign.data.records import PreferenceRecord, Record

_META = ("ds_name", "origin_dataset", "origin_split", "idx", "image_path")


def convert_rlaif_v(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    rid = f"rlaif_v-{row['idx']}" if row.get("idx") is not None else ctx.default_id("rlaif_v")
    return [
        PreferenceRecord(
            rid,
            first_image(row, ctx, ("image", "image_path")),
            require_str(row, "question"),
            require_str(row, "chosen"),
            require_str(row, "rejected"),
            meta=meta_from(row, _META),
        )
    ]


def detect_rlaif_v(keys: set[str]) -> bool:
    return {"question", "chosen", "rejected"} <= keys and bool(keys & {"ds_name", "origin_dataset", "origin_split"})


RLAIF_V = register_format(
    Format(
        name="rlaif_v",
        description="openbmb/RLAIF-V-Dataset: image, question, chosen, rejected, ds_name, origin_* , idx",
        detect=detect_rlaif_v,
        convert=convert_rlaif_v,
        signature="question + chosen + rejected + one of ds_name/origin_dataset/origin_split",
    )
)
