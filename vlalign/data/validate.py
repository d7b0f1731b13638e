"""Validation of every row, and :func:`load_records`, the one way commands read data.

Two layers find problems: the format adapter (missing/mistyped fields, unknown label values — see
:mod:`vlalign.data.formats`) and the record checks (:mod:`vlalign.data.checks`), which are the same for
every format. Both run as one cached ``datasets`` map (:mod:`vlalign.data.transform`) over the rows of
any source (:mod:`vlalign.data.sources`). Every problem becomes one :class:`RowError` with the file,
0-based row, field, reason and a fix; a problem of a whole file has ``row=None``. Nothing is dropped
silently: ``on_bad_rows="skip"`` keeps the good rows and the report lists the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import datasets

from vlalign.data.formats import FORMATS, FormatDetectionError, explain_format
from vlalign.data.records import Record
from vlalign.data.rows import field_names
from vlalign.data.sources import PROVENANCE, FileProblem, RawSource, SourceSpec, code_version, open_source
from vlalign.data.transform import (
    CANONICAL_FEATURES,
    TABLE_FORMAT,
    ConvertSpec,
    ImageLimits,
    convert_stream_row,
    convert_table,
    decode_record,
    undecoded,
)

log = logging.getLogger("vlalign.data")
SHOW_FIRST = 10  # how many errors an exception / the CLI prints; the report always has all of them
_SOURCE_KEYS = ("split", "subset", "revision", "streaming", "cache_dir", "image_root")
_IMAGE_KEYS = ("max_image_pixels", "max_image_side", "allow_network")


@dataclass
class RowError:
    file: str
    row: int | None  # 0-based row index within `file`; None = a problem of the whole file
    field: str
    reason: str
    fix: str = ""

    def line(self) -> str:
        fix = f" (fix: {self.fix})" if self.fix else ""
        where = f"{self.file}:row {self.row}" if self.row is not None else self.file
        return f"{where}: {self.field}: {self.reason}{fix}"


@dataclass
class Skipped:
    file: str
    row: int
    reason: str


class DataError(ValueError):
    """Bad rows in a dataset; the message names file, row, field, reason and fix of the first ones."""

    def __init__(self, message: str, errors: list[RowError]) -> None:
        super().__init__(message)
        self.errors = errors


class RecordView(Sequence):
    """The good records of a canonical dataset, decoded on access (images stay in Arrow until encoded).

    A list-like view: ``len``, indexing, slicing (another view) and iteration; ``==`` compares records.
    """

    def __init__(self, table: datasets.Dataset, indices: Sequence[int]) -> None:
        self.table, self.indices = table, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return RecordView(self.table, self.indices[i])
        row = self.table[self.indices[i]]
        return decode_record(row["record"], row["images"])

    def __iter__(self) -> Iterator[Record]:
        for start in range(0, len(self.indices), 256):
            chunk = self.table[self.indices[start : start + 256]]
            yield from (decode_record(r, im) for r, im in zip(chunk["record"], chunk["images"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def fingerprint(self) -> str:
        """Identifies these records without reading them: the canonical table's ``datasets`` fingerprint
        (input files, adapter options, code version) and the kept rows. For cache keys."""
        h = hashlib.sha256(str(self.table._fingerprint).encode())
        h.update(json.dumps(self.indices).encode())
        return h.hexdigest()[:20]

    def __repr__(self) -> str:
        return f"RecordView({len(self)} records)"


@dataclass
class LoadResult:
    records: Sequence[Record]
    errors: list[RowError]
    n_rows: int
    skipped: list[Skipped] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)  # file -> format used
    warnings: list[RowError] = field(default_factory=list)
    format_reasons: dict[str, str] = field(default_factory=dict)  # file -> why that format was chosen
    canonical: Any = None  # the canonical datasets.Dataset (map-style), for writers and the encoder

    @property
    def n_bad_rows(self) -> int:
        return len({(e.file, e.row) for e in self.errors})

    def report(self) -> dict[str, Any]:
        return {
            "formats": self.formats,
            "format_reasons": self.format_reasons,
            "n_rows": self.n_rows,
            "n_records": len(self.records),
            "n_bad_rows": self.n_bad_rows,
            "n_errors": len(self.errors),
            "n_skipped": len(self.skipped),
            "n_warnings": len(self.warnings),
            "errors_by_field": dict(Counter(e.field.split("[")[0].split(".")[0] for e in self.errors)),
            "errors": [asdict(e) for e in self.errors],
            "skipped": [asdict(s) for s in self.skipped],
            "warnings": [asdict(w) for w in self.warnings],
        }

    def summary(self, show: int = SHOW_FIRST) -> str:
        head = (
            f"{self.n_rows} rows, {len(self.records)} records, {self.n_bad_rows} bad rows "
            f"({len(self.errors)} problems), {len(self.skipped)} skipped by the format's rules"
            + (f", {len(self.warnings)} warnings" if self.warnings else "")
        )
        lines = [head]
        if self.errors:
            by_field = ", ".join(f"{k}: {v}" for k, v in self.report()["errors_by_field"].items())
            lines.append(f"problems by field: {by_field}")
            lines += ["  " + e.line() for e in self.errors[:show]]
            if len(self.errors) > show:
                lines.append(f"  ... and {len(self.errors) - show} more (see the report)")
        lines += ["  warning: " + w.line() for w in self.warnings[: max(0, show - len(self.errors[:show]))]]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------- formats


def detect_formats(raw: RawSource, format: str | None) -> tuple[dict[str, str], dict[str, str]]:
    """(file -> format, file -> why). Files are detected one by one (JSON from their first good row,
    Parquet from its schema); a table source from its columns."""
    if format is not None:
        FORMATS.get(format)  # unknown names fail here, with a did-you-mean
        keys = raw.files if raw.provenance and raw.files else [TABLE_FORMAT]
        return {k: format for k in keys} | {TABLE_FORMAT: format}, {raw.label: f"{format}: given by --format"}
    formats, reasons = {}, {}
    if raw.provenance and raw.files:
        for f in raw.files:
            names = field_names(f)
            if names is not None:
                formats[f], reasons[f] = explain_format(names, f)
        return formats, reasons
    columns = [c for c in (raw.dataset.column_names or []) if c not in PROVENANCE] if hasattr(raw.dataset, "column_names") else []
    if not columns:
        first = next(iter(raw.dataset), None)
        columns = [c for c in (first or {}) if c not in PROVENANCE]
    name, why = explain_format(columns, raw.label)
    return {TABLE_FORMAT: name}, {raw.label: why}


def shown_formats(raw: RawSource, formats: dict[str, str]) -> dict[str, str]:
    """The formats as the report shows them: per file where the files are known, else per source."""
    if TABLE_FORMAT not in formats:
        return formats
    return {f: formats[TABLE_FORMAT] for f in raw.files} or {raw.label: formats[TABLE_FORMAT]}


def convert_spec(raw: RawSource, formats: dict[str, str], options: dict[str, Any] | None,
                 images: ImageLimits) -> ConvertSpec:
    return ConvertSpec(raw.label, raw.json_text, raw.provenance, raw.locator, formats, dict(options or {}),
                       raw.image_root, images, code_version())


def image_limits(check_images: bool, kw: dict[str, Any]) -> ImageLimits:
    return ImageLimits(check_images, **{k: kw[k] for k in _IMAGE_KEYS if kw.get(k) is not None})


def _split_kwargs(kw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    unknown = set(kw) - set(_SOURCE_KEYS) - set(_IMAGE_KEYS) - {"num_proc", "progress"}
    if unknown:
        raise TypeError(f"unknown loading option(s): {', '.join(sorted(unknown))}")
    return {k: kw[k] for k in _SOURCE_KEYS if k in kw and kw[k] is not None}, kw


# ---------------------------------------------------------------------------------------- scanning


@contextmanager
def quiet(enabled: bool) -> Iterator[None]:
    """No ``datasets`` progress bars inside (small inputs: a bar per 50-row file is noise)."""
    was = datasets.is_progress_bar_enabled()
    if enabled and was:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled and was:
            datasets.enable_progress_bars()


def is_small(path: Any, limit: int = 16 * 2**20) -> bool:
    """A local file under ``limit`` bytes (its passes take a moment: no progress bar needed)."""
    try:
        return os.path.isfile(path) and os.path.getsize(path) < limit
    except TypeError:
        return False


def _problems(status: str, text: str) -> list[list[str]]:
    return json.loads(text) if text else []


def collect(canon: datasets.Dataset, n_rows: int, formats: dict[str, str], reasons: dict[str, str]) -> LoadResult:
    """Canonical rows → records (good rows, first id wins), errors, skips and warnings."""
    cols = canon.select_columns(["__file__", "__row__", "__status__", "__problems__", "id"]).to_dict()
    result = LoadResult([], [], n_rows, formats=formats, format_reasons=reasons, canonical=canon)
    good: list[int] = []
    seen: dict[str, tuple[str, int]] = {}
    for i, (file, row, status, problems, rid) in enumerate(
        zip(cols["__file__"], cols["__row__"], cols["__status__"], cols["__problems__"], cols["id"])
    ):
        where_row = None if row < 0 else int(row)
        for fld, reason, fix, level in _problems(status, problems):
            item = RowError(file, where_row, fld, reason, fix)
            if level == "error":
                result.errors.append(item)
            elif level == "warning":
                result.warnings.append(item)
            else:
                result.skipped.append(Skipped(file, int(row), reason))
        if status != "ok":
            continue
        if rid in seen:
            f, r = seen[rid]
            result.errors.append(RowError(file, where_row, "id", f"duplicate id {rid!r} (first used at {f}:row {r})",
                                          "make ids unique"))
            continue
        seen[rid] = (file, int(row))
        good.append(i)
    result.records = RecordView(canon, good)
    return result


def canonical_dataset(raw: RawSource, spec: ConvertSpec, num_proc: int | None = None, progress: bool = True) -> Any:
    """The batched, cached adapter + checks ``map`` over a map-style raw source. The input is read in
    Arrow format, so image columns arrive as their stored ``{bytes, path}`` structs (nothing decoded, and
    no cast pass over the data)."""
    ds = raw.dataset.with_format("arrow")
    kwargs: dict[str, Any] = {"num_proc": num_proc} if num_proc and num_proc > 1 and len(ds) > 1 else {}
    with quiet(not progress or len(ds) < 5000):
        out = ds.map(convert_table, batched=True, batch_size=256, with_indices=True, fn_kwargs={"spec": spec},
                     remove_columns=ds.column_names, features=CANONICAL_FEATURES, desc="validate rows",
                     writer_batch_size=256, **kwargs)
    return out.with_format(None)


def scan(
    path: Any,
    format: str | None = None,
    options: dict[str, Any] | None = None,
    check_images: bool = True,
    **kw: Any,
) -> LoadResult:
    """Convert and check every row of ``path``; collect records, errors and skips (never raises on rows).

    ``path`` is anything :func:`vlalign.data.sources.open_source` takes; keyword options: ``split``,
    ``subset``, ``revision``, ``streaming``, ``cache_dir``, ``image_root``, ``num_proc``, ``progress``,
    ``max_image_pixels``, ``max_image_side``, ``allow_network``. In streaming mode the rows are checked
    in one pass of constant memory and no records are kept (``records`` is empty).
    """
    source_kw, kw = _split_kwargs(kw)
    try:
        with quiet(not kw.get("progress", True) or is_small(path)):
            raw = open_source(SourceSpec(path, **source_kw))
    except FileProblem as exc:
        return LoadResult([], [RowError(exc.file, None, "<file>", exc.reason, exc.fix)], 0)
    formats, reasons = detect_formats(raw, format)
    for file, why in reasons.items():
        log.info("%s: format %s", file, why)
    spec = convert_spec(raw, formats, options, image_limits(check_images, kw))
    if isinstance(raw.dataset, datasets.IterableDataset):
        rows = (c for r in undecoded(raw.dataset) for c in convert_stream_row(r, spec))
        return stream_scan(rows, shown_formats(raw, formats), reasons)
    formats = shown_formats(raw, formats)
    canon = canonical_dataset(raw, spec, kw.get("num_proc"), kw.get("progress", True))
    n_rows = len(raw.dataset)
    if raw.json_text:  # file-level problems travel as a row with __row__ = -1; they are not data rows
        n_rows -= sum(1 for r in raw.dataset.select_columns(["__row__"])["__row__"] if r < 0)
    return collect(canon, n_rows, formats, reasons)


def stream_scan(canon: Iterator[dict[str, Any]], formats: dict[str, str], reasons: dict[str, str]) -> LoadResult:
    """One constant-memory pass over streamed canonical rows: counts and problems, no records."""
    result = LoadResult([], [], 0, formats=formats, format_reasons=reasons)
    seen_rows: set[tuple[str, int]] = set()
    n_ok = 0
    for row in canon:
        key = (row["__file__"], row["__row__"])
        if key not in seen_rows and row["__row__"] >= 0:
            result.n_rows += 1
        seen_rows.add(key)
        if len(seen_rows) > 4096:  # rows of one input row are adjacent: keep only a small window
            seen_rows = {key}
        n_ok += row["__status__"] == "ok"
        for fld, reason, fix, level in _problems(row["__status__"], row["__problems__"]):
            where = None if row["__row__"] < 0 else row["__row__"]
            if level == "error":
                result.errors.append(RowError(row["__file__"], where, fld, reason, fix))
            elif level == "warning":
                result.warnings.append(RowError(row["__file__"], where, fld, reason, fix))
            else:
                result.skipped.append(Skipped(row["__file__"], row["__row__"], reason))
    result.records = _Count(n_ok)
    return result


class _Count(Sequence):
    """``len`` of the records a streaming scan found (they are not kept)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        raise TypeError("a streaming scan keeps no records; iterate vlalign.data.stream instead")


def write_report(result: LoadResult, path: str | Path, source: Any) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"path": str(source), **result.report()}, indent=2, ensure_ascii=True) + "\n")
    return path


def _from_config(cfg: Any) -> tuple[Any, dict[str, Any]]:
    """A :class:`vlalign.data.config.DataConfig` → (source, load_records keyword arguments)."""
    kw = {k: getattr(cfg, k) for k in (*_SOURCE_KEYS, *_IMAGE_KEYS, "num_proc") if getattr(cfg, k, None) is not None}
    kw.update(format=cfg.format, on_bad_rows=cfg.on_bad_rows, options=dict(getattr(cfg, "format_options", {}) or {}))
    if getattr(cfg, "bad_rows_report", None):
        kw["report_path"] = cfg.bad_rows_report
    return cfg.train, kw


def load_records(
    path: Any,
    format: str | None = None,
    on_bad_rows: str = "error",
    report_path: str | Path | None = None,
    options: dict[str, Any] | None = None,
    check_images: bool = True,
    **kw: Any,
) -> LoadResult:
    """Load a dataset in any supported format and from any source as canonical records.

    ``path``: a file, folder, glob, ``save_to_disk`` folder, Hub-layout folder, Hub id, a ``datasets``
    object, or a :class:`~vlalign.data.config.DataConfig` (whose fields then give every option).
    ``on_bad_rows="error"`` (default) raises :class:`DataError` listing the first bad rows; ``"skip"``
    keeps the good rows. Either way the full report goes to ``report_path`` when given; skipping
    without a report logs the first bad rows, so nothing is dropped unseen.
    """
    if hasattr(path, "train") and hasattr(path, "on_bad_rows"):
        path, cfg_kw = _from_config(path)
        format = cfg_kw.pop("format", format)
        on_bad_rows = cfg_kw.pop("on_bad_rows", on_bad_rows)
        report_path = cfg_kw.pop("report_path", report_path)
        options = cfg_kw.pop("options", None) or options
        kw = {**cfg_kw, **kw}
    if on_bad_rows not in ("error", "skip"):
        raise ValueError(f"on_bad_rows={on_bad_rows!r}: use 'error' or 'skip'")
    result = scan(path, format, options, check_images, **kw)
    if report_path is not None:
        write_report(result, report_path, path)
    if result.errors and on_bad_rows == "error":
        shown = "\n".join("  " + e.line() for e in result.errors[:SHOW_FIRST])
        more = f"\n  ... and {len(result.errors) - SHOW_FIRST} more" if len(result.errors) > SHOW_FIRST else ""
        where = f"the full list is in {report_path}" if report_path else f"run `vlalign data validate {path} --report report.json` for the full list"
        raise DataError(
            f"{result.n_bad_rows} of {result.n_rows} rows in {path} are bad:\n{shown}{more}\n"
            f"Fix them ({where}), or load with on_bad_rows='skip' to train on the good rows only.",
            result.errors,
        )
    if result.errors and report_path is None:
        log.warning("%s: skipped %d bad rows (not written anywhere: pass a report path to keep the list):\n%s",
                    path, result.n_bad_rows, "\n".join("  " + e.line() for e in result.errors[:SHOW_FIRST]))
    return result


def iter_errors(result: LoadResult) -> Iterator[tuple[int | None, str]]:
    """(row, field) pairs of a result's errors — handy for tests and quick looks."""
    for e in result.errors:
        yield e.row, e.field


__all__ = ["DataError", "FormatDetectionError", "LoadResult", "RecordView", "RowError", "Skipped", "load_records",
           "scan", "write_report"]
