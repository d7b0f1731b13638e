"""Finding data files, and writing canonical records as JSONL, Parquet or a ``save_to_disk`` folder.

Image bytes are written under their content hash (``images/<sha256>.<ext>``): two rows showing the same
picture share one file, and two different pictures can never overwrite each other — whatever their row
ids look like (ids that differ only in ``/`` vs ``_``, or after 80 characters, used to collide).
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import datasets

from vlalign.data.images import content_name, normalize_ref
from vlalign.data.records import Record, to_dict
from vlalign.data.rows import SUPPORTED_SUFFIXES, RawRow, iter_file_rows, suffix_of

__all__ = [
    "SUPPORTED_SUFFIXES",
    "RawRow",
    "data_files",
    "is_glob",
    "iter_rows",
    "materialize_images",
    "write_jsonl",
    "write_records",
    "write_records_table",
]

GLOB_CHARS = "*?["


def is_glob(path: str | Path) -> bool:
    return any(c in str(path) for c in GLOB_CHARS)


def data_files(path: str | Path) -> list[Path]:
    """The data files under ``path`` (a file, a folder searched recursively, or a glob), sorted."""
    if is_glob(path):
        files = sorted(Path(f) for f in glob.glob(str(path), recursive=True)
                       if os.path.isfile(f) and suffix_of(f) in SUPPORTED_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{path}: the pattern matches no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return files
    p = Path(path)
    if p.is_file():
        if suffix_of(str(p)) not in SUPPORTED_SUFFIXES:
            raise ValueError(f"{p}: unsupported file type {p.suffix!r}; use one of {', '.join(SUPPORTED_SUFFIXES)}")
        return [p]
    if p.is_dir():
        files = sorted(f for f in p.rglob("*") if f.is_file() and suffix_of(str(f)) in SUPPORTED_SUFFIXES
                       and not any(part.startswith(".") for part in f.relative_to(p).parts))
        if not files:
            raise ValueError(f"{p}: folder holds no {'/'.join(SUPPORTED_SUFFIXES)} files")
        return files
    raise FileNotFoundError(f"{p}: no such file or folder")


def iter_rows(path: str | Path) -> Iterator[RawRow]:
    """Every row of every data file under ``path`` (see :mod:`vlalign.data.rows`)."""
    for f in data_files(path):
        yield from iter_file_rows(str(f))


def materialize_images(rec: Record, out_dir: Path, images_subdir: str = "images") -> Record:
    """Write in-memory image bytes to ``out_dir/images/<sha256>.<ext>`` and point the record at them.

    Path references become paths relative to ``out_dir`` so the written JSONL resolves them against its
    own folder, as the canonical format specifies. The caller's record is left untouched.
    """
    refs: list[Any] = []
    for ref in rec.images:
        norm = normalize_ref(ref)
        if isinstance(norm, bytes):
            name = content_name(norm)
            target = out_dir / images_subdir / name
            if not target.is_file():  # same content → same name: written once
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(target.suffix + f".tmp{os.getpid()}")
                tmp.write_bytes(norm)
                tmp.replace(target)
            refs.append(f"{images_subdir}/{name}")
        else:
            p = Path(str(norm))
            try:
                refs.append(str(p.resolve().relative_to(out_dir.resolve())))
            except ValueError:
                refs.append(os.path.relpath(p.resolve(), out_dir.resolve()))
    return dataclasses.replace(rec, images=refs)


def write_jsonl(rows: Iterable[dict[str, Any]], path: str | Path) -> int:
    """Write dicts as JSONL (atomically: temp file + rename). Returns the number of rows."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def write_records(records: Iterable[Record], out_dir: str | Path, filename: str = "records.jsonl") -> Path:
    """Records → ``out_dir/filename`` in the canonical JSONL layout, image bytes saved as files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / filename
    write_jsonl((to_dict(materialize_images(r, out)) for r in records), target)
    return target


# Free-form fields whose shape differs from row to row: stored as JSON text in Arrow tables (the canonical
# adapter reads them back), so one table holds every row whatever its metadata.
JSON_TEXT_FIELDS = ("meta", "ratings", "conversation", "safety", "critique", "rejected_segments", "chosen_segments")
TABLE_FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "images": datasets.List(datasets.Image()),
    "prompt": datasets.Value("string"),
    "reference": datasets.Value("string"),
    "chosen": datasets.Value("string"),
    "rejected": datasets.Value("string"),
    "completion": datasets.Value("string"),
    "label": datasets.Value("bool"),
    "responses": datasets.List(datasets.Value("string")),
    "scores": datasets.List(datasets.Value("float64")),
    "margin": datasets.Value("float64"),
    **{k: datasets.Value("string") for k in JSON_TEXT_FIELDS},
})


def table_row(rec: Record) -> dict[str, Any]:
    """A record as a row of :data:`TABLE_FEATURES`: images embedded as bytes, free-form fields as JSON."""
    row = dict.fromkeys(TABLE_FEATURES)
    row.update(to_dict(rec))
    for key in JSON_TEXT_FIELDS:
        row[key] = None if row[key] is None else json.dumps(row[key], ensure_ascii=True)
    images = []
    for ref in rec.images:
        norm = normalize_ref(ref)
        images.append({"bytes": norm if isinstance(norm, bytes) else Path(norm).read_bytes(), "path": None})
    row["images"] = images
    return row


def _table_rows(records: Iterable[Record]) -> Iterator[dict[str, Any]]:
    yield from (table_row(r) for r in records)


def write_records_table(records: Iterable[Record], target: str | Path, layout: str) -> Path:
    """Records → a self-contained Parquet file (``layout="parquet"``) or ``save_to_disk`` folder
    (``layout="disk"``), images embedded as ``datasets.Image`` bytes; reloadable by ``load_records``.
    Rows stream through an Arrow file, so memory does not grow with the number of records."""
    if layout not in ("parquet", "disk"):
        raise ValueError(f"unknown layout {layout!r}; use parquet or disk")
    ds = datasets.Dataset.from_generator(_table_rows, gen_kwargs={"records": records}, features=TABLE_FEATURES)
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if layout == "parquet":
        ds.to_parquet(str(target))
    else:
        ds.save_to_disk(str(target))
    return target
