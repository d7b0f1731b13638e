"""Adapters as ``datasets`` transforms: raw rows → canonical rows, one batched ``map``.

:func:`convert_batch` runs the format adapter and the record checks (images fully decoded) on a batch
of raw rows and writes one canonical row per record, or one row per bad / skipped input row, with its
original file and row. Because it is a ``datasets.Dataset.map`` it runs in ``num_proc`` processes and is
cached under a fingerprint of the input, the function and its :class:`ConvertSpec` (which includes the
data layer's code version), so a second run over the same data starts at once.

Canonical rows (:data:`CANONICAL_FEATURES`): ``record`` is the record as JSON without its images;
``images`` is a list of ``datasets.Image(decode=False)`` structs (bytes or a path), decoded lazily when
the row is encoded; ``__status__`` is ``ok`` / ``bad`` / ``skipped`` and ``__problems__`` lists
``[field, reason, fix, level]`` (level ``error`` or ``warning``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import datasets

from vlalign.data.checks import check_record, record_warnings
from vlalign.data.formats import FORMATS, RowContext, RowProblem, RowSkipped
from vlalign.data.images import DEFAULT_MAX_IMAGE_PIXELS, DEFAULT_MAX_IMAGE_SIDE, ImageChecker, is_url
from vlalign.data.records import Record, from_dict
from vlalign.data.rows import undecoded  # noqa: F401 (re-exported)
from vlalign.data.sources import PROVENANCE, Locator

CANONICAL_FEATURES = datasets.Features({
    "__file__": datasets.Value("string"),
    "__row__": datasets.Value("int64"),
    "__status__": datasets.Value("string"),
    "__problems__": datasets.Value("string"),
    "id": datasets.Value("string"),
    "record": datasets.Value("string"),
    "images": datasets.List(datasets.Image(decode=False)),
})
TABLE_FORMAT = "*"  # key of ConvertSpec.formats for sources whose rows all share one format


@dataclass(frozen=True)
class ImageLimits:
    check: bool = True
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    max_image_side: int = DEFAULT_MAX_IMAGE_SIDE
    allow_network: bool = False
    decode: bool = True  # False: header and limits only (the caller decodes the image right after)


@dataclass
class ConvertSpec:
    """Everything :func:`convert_batch` needs; plain data, so ``datasets`` can hash it into the cache key."""

    label: str
    json_text: bool
    provenance: bool
    locator: Locator
    formats: dict[str, str]  # file -> format name; TABLE_FORMAT for single-format sources
    options: dict[str, Any] = field(default_factory=dict)
    image_root: str | None = None
    images: ImageLimits = field(default_factory=ImageLimits)
    code_version: str = ""


@lru_cache(maxsize=4)
def _checker(limits: ImageLimits) -> ImageChecker:
    """One image checker per process and limits: its cache spans batches."""
    return ImageChecker(limits.max_image_pixels, limits.max_image_side, limits.allow_network, decode=limits.decode)


class _NoImages(ImageChecker):
    def problem(self, ref: Any, base_dir: Any = None) -> str | None:
        return None


def image_struct(ref: Any) -> dict[str, Any]:
    return {"bytes": ref, "path": None} if isinstance(ref, bytes) else {"bytes": None, "path": str(ref)}


@lru_cache(maxsize=8)
def _field_names(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls) if f.name != "images")


def record_json(rec: Record) -> str:
    """The record without its images as JSON (a shallow walk: ``asdict`` deep-copies and is 5x slower)."""
    row = {name: getattr(rec, name) for name in _field_names(type(rec))}
    for key in ("rejected_segments", "chosen_segments"):
        if key in row:
            row[key] = [vars(s) for s in row[key]]
    for key in ("safety", "critique"):
        if row.get(key) is not None:
            row[key] = vars(row[key])
    return json.dumps(row, ensure_ascii=True)  # ascii: lone surrogates stay escapes until the check names them


def decode_record(record: str, images: Sequence[dict[str, Any]]) -> Record:
    """A canonical row → its record (images as bytes or absolute paths)."""
    row = json.loads(record)
    row["images"] = [im["bytes"] if im.get("bytes") else im["path"] for im in images]
    return from_dict(row)


def parse_json_row(text: str) -> tuple[dict[str, Any] | None, str | None]:
    """One JSON row's text → (object, None) or (None, the reason it is not a JSON object)."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"invalid JSON: {exc.msg} at column {exc.colno}"
    except RecursionError:
        return None, "invalid JSON: nested too deeply"
    if not isinstance(obj, dict):
        return None, f"row is a {type(obj).__name__}, expected a JSON object"
    return obj, None


def _row_data(batch: dict[str, list], i: int, spec: ConvertSpec) -> tuple[dict[str, Any] | None, str | None]:
    """(raw row dict, reading error) of batch row ``i``."""
    if spec.provenance and batch.get("__error__", [None])[i]:
        return None, batch["__error__"][i]
    if spec.json_text:
        return parse_json_row(batch["__raw__"][i])
    return {k: v[i] for k, v in batch.items() if k not in PROVENANCE}, None


def _convert_one(data: dict[str, Any], file: str, row: int, spec: ConvertSpec, checker: ImageChecker) -> list[dict]:
    """One raw row → canonical rows (never raises)."""
    base = {"__file__": file, "__row__": row, "id": "", "record": "", "images": []}
    fmt = spec.formats.get(file) or spec.formats.get(TABLE_FORMAT)
    if fmt is None:
        reason = "no format for this file: none of its first rows could be read to detect it"
        return [{**base, "__status__": "bad", "__problems__": json.dumps([["<row>", reason, "pass --format", "error"]])}]
    try:
        ctx = RowContext(file, row, spec.options, spec.image_root)
        records = FORMATS.get(fmt).convert(data, ctx)
    except RowProblem as p:
        return [{**base, "__status__": "bad", "__problems__": json.dumps([[p.field, p.reason, p.fix, "error"]])}]
    except RowSkipped as s:
        return [{**base, "__status__": "skipped", "__problems__": json.dumps([["<row>", s.reason, "", "skip"]])}]
    except Exception as exc:  # noqa: BLE001 (an adapter failure is this row's error, never a crash)
        reason = f"the {fmt} adapter failed ({type(exc).__name__}: {exc})"
        return [{**base, "__status__": "bad", "__problems__": json.dumps([["<row>", reason, "check the row's field types", "error"]])}]
    out = []
    for rec in records:
        problems = [[*p, "error"] for p in check_record(rec, checker)]
        problems += [[*p, "warning"] for p in record_warnings(rec)]
        rec.images = [checker.resolved.get(r, r) if is_url(r) else r for r in rec.images]
        status = "bad" if any(p[3] == "error" for p in problems) else "ok"
        out.append({**base, "__status__": status, "__problems__": json.dumps(problems) if problems else "",
                    "id": str(rec.id), "record": record_json(rec) if status == "ok" else "",
                    "images": [image_struct(r) for r in rec.images] if status == "ok" else []})
    return out


def convert_row(data: dict[str, Any] | None, error: str | None, file: str, row: int, spec: ConvertSpec,
                checker: ImageChecker | None = None) -> list[dict[str, Any]]:
    """One raw row (or its reading error) → canonical rows. Never raises."""
    if checker is None:
        checker = _checker(spec.images) if spec.images.check else _NoImages()
    if data is None:
        where, fix = ("<file>", "fix the file") if row < 0 else ("<row>", "fix the JSON of this row")
        return [{"__file__": file, "__row__": row, "__status__": "bad", "id": "", "record": "", "images": [],
                 "__problems__": json.dumps([[where, error or "unreadable", fix, "error"]])}]
    return _convert_one(data, file, row, spec, checker)


def convert_stream_row(raw: dict[str, Any], spec: ConvertSpec) -> list[dict[str, Any]]:
    """A streamed raw row (it carries ``__file__``/``__row__``/``__error__``) → canonical rows."""
    data = None if raw.get("__error__") else {k: v for k, v in raw.items() if k not in PROVENANCE}
    return convert_row(data, raw.get("__error__"), raw["__file__"], int(raw["__row__"]), spec)


def convert_table(table: Any, indices: list[int], spec: ConvertSpec) -> dict[str, list]:
    """The map function on an Arrow-formatted dataset: a ``pyarrow.Table`` batch → canonical rows."""
    return convert_batch(table.to_pydict(), indices, spec)


def convert_batch(batch: dict[str, list], indices: list[int], spec: ConvertSpec) -> dict[str, list]:
    """The batched ``map`` function: raw rows → canonical rows (see the module docstring)."""
    checker = _checker(spec.images) if spec.images.check else _NoImages()
    n = len(next(iter(batch.values())))
    rows: list[dict[str, Any]] = []
    for i in range(n):
        file, row = (batch["__file__"][i], int(batch["__row__"][i])) if spec.provenance else spec.locator.locate(indices[i])
        try:
            data, error = _row_data(batch, i, spec)
        except Exception as exc:  # noqa: BLE001 (an unparseable row is this row's error)
            data, error = None, f"unreadable row ({type(exc).__name__}: {exc})"
        rows += convert_row(data, error, file, row, spec, checker)
    return {k: [r[k] for r in rows] for k in CANONICAL_FEATURES}
