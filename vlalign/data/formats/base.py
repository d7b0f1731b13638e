"""The shape every format adapter has, and the small helpers adapters share.

An adapter is a :class:`Format`: a name, a ``detect(keys)`` test on a row's field names, and a
``convert(row, ctx)`` that turns ONE raw row into zero or more canonical records. A row that is wrong
raises :class:`RowProblem` (collected into the validation report, never printed and forgotten); a row
that a documented rule filters out on purpose (e.g. VLFeedback pairs whose rating gap is too small)
raises :class:`RowSkipped` so it is counted and listed, not silently dropped.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlalign.data.images import normalize_ref
from vlalign.data.problems import RowProblem, RowSkipped  # noqa: F401 (re-exported to the adapters)
from vlalign.data.records import Record
from vlalign.registry import Registry


@dataclass
class RowContext:
    """Where a row lives (for ids and relative image paths) plus the user's format options.

    ``image_root`` (the ``data.image_root`` setting, or a hub dataset's folder) overrides the data
    file's own folder as the base of relative image paths.
    """

    file: str
    row: int
    options: dict[str, Any] = field(default_factory=dict)
    image_root: str | None = None

    @property
    def base_dir(self) -> Path:
        return Path(self.image_root) if self.image_root else Path(self.file).parent

    def default_id(self, prefix: str) -> str:
        return f"{prefix}-{Path(self.file).stem}-{self.row}"

    def option(self, name: str, default: Any) -> Any:
        return self.options.get(name, default)


@dataclass
class Format:
    name: str
    description: str
    detect: Callable[[set[str]], bool]
    convert: Callable[[dict[str, Any], RowContext], list[Record]]
    options: dict[str, str] = field(default_factory=dict)  # option name -> what it does
    signature: str = ""  # the field rule ``detect`` applies, in words (auto-detection says why it chose)


FORMATS: Registry[Format] = Registry("data format")


def register_format(fmt: Format) -> Format:
    FORMATS.register(fmt.name)(fmt)
    return fmt


# ---- helpers shared by adapters -------------------------------------------------------------------


def require(row: dict[str, Any], key: str, fix: str = "") -> Any:
    """``row[key]``, or a RowProblem naming the missing field."""
    if key not in row or row[key] is None:
        raise RowProblem(key, "missing field", fix or f"add a {key!r} value to the row")
    return row[key]


def require_str(row: dict[str, Any], key: str, *, allow_empty: bool = False) -> str:
    value = require(row, key)
    if not isinstance(value, str):
        raise RowProblem(key, f"expected a string, got {type(value).__name__}", f"store {key!r} as text")
    if not allow_empty and not value.strip():
        raise RowProblem(key, "empty string", f"fill in {key!r} or drop the row")
    return value


def image_refs(value: Any, ctx: RowContext, key: str) -> list[str | bytes]:
    """One image or a list of them (paths, bytes, HF structs) → normalized refs (bytes / absolute paths)."""
    items = value if isinstance(value, list) else [value]
    out: list[str | bytes] = []
    for k, item in enumerate(items):
        try:
            out.append(normalize_ref(item, ctx.base_dir))
        except (TypeError, ValueError) as exc:
            where = key if not isinstance(value, list) else f"{key}[{k}]"
            raise RowProblem(where, str(exc), "give a path relative to the data file, bytes, or {bytes, path}")
    return out


def first_image(row: dict[str, Any], ctx: RowContext, keys: tuple[str, ...]) -> list[str | bytes]:
    """Images from the first of ``keys`` that has a non-empty value (e.g. ``image`` then ``image_path``)."""
    for key in keys:
        value = row.get(key)
        if value is None or value == "" or (isinstance(value, dict) and not (value.get("bytes") or value.get("path"))):
            continue
        return image_refs(value, ctx, key)
    raise RowProblem(keys[0], "missing image", f"set one of {', '.join(keys)} to an image path or bytes")


def parse_bool(value: Any, key: str) -> bool:
    """Booleans as datasets store them: true/false, "True"/"yes"/"1"/"safe" ... anything else is an error."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in {"true", "yes", "1", "safe", "y", "t"}:
            return True
        if text in {"false", "no", "0", "unsafe", "n", "f"}:
            return False
    raise RowProblem(key, f"unknown boolean value {value!r}", "use true/false (or yes/no)")


def maybe_json(value: Any) -> Any:
    """Fields that hold JSON text (RLHF-V ``origin_split``) → parsed; anything else unchanged."""
    if isinstance(value, str) and value[:1] in "{[":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def meta_from(row: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """Copy the dataset's bookkeeping fields (source, split, index) into ``meta`` (only those present)."""
    return {k: maybe_json(row[k]) for k in keys if row.get(k) is not None}


def parse_number(value: Any, key: str) -> float:
    """A rating / rate / score as datasets store it (number or numeric text) → a finite float.

    ``"abc"``, ``{}``, booleans, NaN and ±inf are row problems naming the field, never crashes or
    silently-propagating NaNs.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise RowProblem(key, f"expected a number, got {type(value).__name__} {value!r:.40}", "store a finite number")
    try:
        number = float(value)
    except ValueError:
        raise RowProblem(key, f"{value!r:.40} is not a number", "store a finite number") from None
    if not math.isfinite(number):
        raise RowProblem(key, f"{value!r} is not finite", "store a finite number (NaN/inf carry no preference)")
    return number


def list_of_dicts(value: Any, key: str) -> list[Any]:
    """A ``datasets`` ``Sequence`` of structs arrives as a dict of lists: turn it back into a list of dicts
    (a plain list passes through). Lengths that disagree are a row problem."""
    if isinstance(value, dict):
        lengths = {k: len(v) for k, v in value.items() if isinstance(v, list)}
        if len(lengths) != len(value) or len(set(lengths.values())) > 1:
            raise RowProblem(key, "a column-wise struct whose fields have different lengths", "fix the list fields")
        n = next(iter(lengths.values()), 0)
        return [{k: value[k][i] for k in value} for i in range(n)]
    return value
