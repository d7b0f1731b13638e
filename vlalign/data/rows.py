"""Reading raw rows from data files, one at a time, each with the file and 0-based row it came from.

JSON/JSONL is read here rather than by ``datasets``' JSON builder on purpose: a real dataset has rows
that are not valid JSON, bytes that are not UTF-8, and fields whose type changes from row to row (a
rate ``3`` here, ``"abc"`` there). An Arrow JSON reader must give a whole file one schema, so any of
those aborts the file; here each becomes that row's error and the other rows load. JSON rows therefore
travel as text (``__raw__``) and are parsed by the adapter, while Parquet rows (already typed) are read
with pyarrow. :func:`provenance_rows` is the generator ``datasets`` builds datasets from (map-style via
``Dataset.from_generator``, streaming via ``IterableDataset.from_generator``, one shard per file).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import fsspec
import pyarrow.parquet as pq

JSON_SUFFIXES = (".jsonl", ".json")
SUPPORTED_SUFFIXES = (".jsonl", ".json", ".parquet")


@dataclass
class RawRow:
    file: str
    row: int | None  # 0-based index within `file`; None for a problem of the whole file
    data: dict[str, Any] | None
    error: str | None = None  # set when the row could not be parsed at all
    text: str | None = None  # the row's JSON text when it was read without parsing (``parse=False``)


def suffix_of(path: str) -> str:
    name = str(path).lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), Path(name).suffix)


def _open(path: str, mode: str = "rb") -> Any:
    """Local paths and fsspec URLs (``hf://datasets/...``) alike."""
    return fsspec.open(path, mode).open()


def _as_row(file: str, row: int, obj: Any) -> RawRow:
    if not isinstance(obj, dict):
        return RawRow(file, row, None, f"row is a {type(obj).__name__}, expected a JSON object")
    return RawRow(file, row, obj)


def _decode_line(raw: bytes) -> tuple[str | None, str | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        return None, (f"bytes that are not UTF-8 ({raw[exc.start:exc.start + 4]!r} at byte {exc.start} of the line); "
                      "re-save the file as UTF-8")


def jsonl_rows(file: str, parse: bool = True) -> Iterator[RawRow]:
    """Rows of a JSONL file; an undecodable or invalid line is a row with ``error``, not a crash.

    ``parse=False`` hands each line over as ``text`` (the adapter parses it once, in the ``map``)."""
    row = 0
    with _open(file) as fh:
        for raw in fh:
            if not raw.strip():
                continue  # blank lines are not rows (editors add a trailing one)
            text, error = _decode_line(raw)
            if not parse and error is None:
                yield RawRow(file, row, None, None, text)
                row += 1
                continue
            if error is None:
                try:
                    obj = json.loads(text)
                except json.JSONDecodeError as exc:
                    error = f"invalid JSON: {exc.msg} at column {exc.colno}"
                except RecursionError:
                    error = "invalid JSON: nested too deeply"
            yield RawRow(file, row, None, error) if error else _as_row(file, row, obj)
            row += 1


def json_rows(file: str) -> Iterator[RawRow]:
    """Rows of a JSON file holding a list (or ``{"data": [...]}``); a broken file is one file-level error."""
    with _open(file) as fh:
        data = fh.read()
    try:
        obj = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        yield RawRow(file, None, None, f"bytes that are not UTF-8 on line {line} (byte {exc.start}); re-save as UTF-8")
        return
    except json.JSONDecodeError as exc:
        yield RawRow(file, None, None, f"invalid JSON file: {exc.msg} at line {exc.lineno}")
        return
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]  # {"data": [...]} wrappers are common in released JSON dumps
    for i, item in enumerate(obj if isinstance(obj, list) else [obj]):
        yield _as_row(file, i, item)


READ_BATCH_BYTES = 256 * 1024  # row data per Parquet read batch (uncompressed size, from the file's footer)
READ_BATCH_MAX_ROWS = 256


def read_batch_rows(metadata: Any, target_bytes: int = READ_BATCH_BYTES,
                    max_rows: int = READ_BATCH_MAX_ROWS) -> int:
    """Rows per read batch of a Parquet file: about ``target_bytes`` of row data, at least 1 row and at
    most ``max_rows``, from the footer's uncompressed row-group sizes (``max_rows`` when it has none).

    WHY bytes, not rows: a streaming shuffle reads several files at once (``datasets`` interleaves up to
    10 shards into its buffer), each holding one read batch, so read-ahead memory is open files × batch.
    On the data-path benchmark (bench/data_path.py: 8 KB rows, 10 files open) the live C heap is 64 MiB
    above that of one open file with 256-row batches and 28 MiB with the ~32 rows of 256 KiB (the rest is
    each reader's own buffers); with 1 MB images 256 rows would be 256 MiB per open file.
    """
    rows = sum(metadata.row_group(i).num_rows for i in range(metadata.num_row_groups))
    size = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
    if rows <= 0 or size <= 0:
        return max_rows
    return max(1, min(max_rows, target_bytes * rows // size))


def parquet_rows(file: str, batch_size: int | None = None) -> Iterator[RawRow]:
    """Rows of a Parquet file (struct columns such as HF Image ``{bytes, path}`` arrive as dicts), read
    ``batch_size`` rows at a time (default :func:`read_batch_rows`): memory holds one batch, not the row
    group (which may be 100s of MB)."""
    local = "://" not in str(file)
    with (contextlib.nullcontext(str(file)) if local else _open(file)) as src:
        try:
            pf = pq.ParquetFile(src, pre_buffer=False, buffer_size=1 << 20)
        except Exception as exc:  # noqa: BLE001 (not Parquet, truncated footer...: the file's problem)
            yield RawRow(file, None, None, f"not a readable Parquet file ({type(exc).__name__}: {exc})")
            return
        row = 0
        for batch in pf.iter_batches(batch_size=batch_size or read_batch_rows(pf.metadata), use_threads=False):
            for item in batch.to_pylist():
                yield RawRow(file, row, item)
                row += 1


READERS = {".jsonl": jsonl_rows, ".json": json_rows, ".parquet": parquet_rows}


def iter_file_rows(file: str, parse: bool = True) -> Iterator[RawRow]:
    kind = suffix_of(file)
    if kind not in READERS:
        raise ValueError(f"{file}: unsupported file type; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    yield from (jsonl_rows(file, parse) if kind == ".jsonl" else READERS[kind](file))


def first_object(file: str, limit: int = 1000) -> dict[str, Any] | None:
    """The first parseable row of a file (for format detection), or None if the first rows are all bad."""
    for k, raw in enumerate(iter_file_rows(file)):
        if raw.data is not None:
            return raw.data
        if k >= limit:
            break
    return None


def field_names(file: str) -> list[str] | None:
    """The field names a file's rows have, for format detection: a Parquet file's schema (no row is
    read: a row group can hold hundreds of MB of images), else the keys of its first parseable row."""
    if suffix_of(file) == ".parquet":
        try:
            with _open(file) as fh:
                return list(pq.read_schema(fh).names)
        except Exception:  # noqa: BLE001 (an unreadable file is reported by its rows, not here)
            return None
    obj = first_object(file)
    return None if obj is None else list(obj)


def provenance_rows(shards: list[str], as_text: bool, signature: Any = None) -> Iterator[dict[str, Any]]:
    """Every row of ``shards`` as a dict with ``__file__``, ``__row__`` and ``__error__``.

    ``as_text=True`` (JSON sources, map-style): the row travels as its JSON text in ``__raw__`` so
    every row has the same four string/int columns whatever its fields. Otherwise (streaming, Parquet)
    the row's own fields are included. ``signature`` (file sizes/mtimes, code version) is unused here:
    it is part of the arguments only so that ``datasets``' cache key changes when the files change.
    """
    del signature
    for file in shards:
        for raw in iter_file_rows(file, parse=not as_text):
            base = {"__file__": raw.file, "__row__": -1 if raw.row is None else raw.row, "__error__": raw.error}
            if as_text:
                # ensure_ascii: a lone surrogate stays an escape (Arrow strings must be valid UTF-8); the
                # adapter's parse brings it back and the string check reports it.
                text = raw.text if raw.text is not None else None if raw.data is None else json.dumps(raw.data)
                yield {**base, "__raw__": text}
            else:
                yield {**base, **(raw.data or {})}


def undecoded(ds: Any) -> Any:
    """The same dataset with every Image feature left as {bytes, path} (adapters decode nothing)."""
    features = getattr(ds, "features", None) or {}
    for name, ft in features.items():
        plain = _no_decode(ft)
        if plain is not ft:
            ds = ds.cast_column(name, plain)
    return ds


def _no_decode(ft: Any) -> Any:
    if isinstance(ft, datasets.Image) and ft.decode:
        return datasets.Image(decode=False)
    if isinstance(ft, (datasets.List, datasets.LargeList)):
        inner = _no_decode(ft.feature)
        return ft if inner is ft else type(ft)(inner)
    return ft
