"""Written critiques of Shapes answers, from the ground truth: training data for a critique reward model.

A critique reward model (MM-RLHF) first writes what is wrong with an answer, then scores it. On Shapes the
scene's object list says exactly what is wrong, so the reference critiques can be written by rule: the
objects an answer claims (read with :func:`vlalign.data.shapes.text.parse_mentions`, the same parser every
Shapes metric uses) against the objects the scene holds. A critique names each problem once, in the order
the answer makes it, then what the answer leaves out::

    "Mentions a blue square that is not in the image; misses the red circle."

Which rule writes the critique depends on the record's task (``meta["task"]``), picked from
:data:`CRITICS`: ``caption`` (object lists) and ``position`` ("Where is the red circle?").
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from vlalign.data.records import CritiqueLabels, PreferenceRecord
from vlalign.data.shapes.grammar import NUMBER_WORDS
from vlalign.data.shapes.scene import ObjectType, objects_of, positions_of
from vlalign.data.shapes.text import parse_mentions
from vlalign.registry import Registry

CORRECT = "Correct: it names every object in the image and nothing else."
CORRECT_POSITION = "Correct: the {obj} is {where}."
_POSITION_RE = re.compile(r"\b(?:on the (left|right)|in the (middle))\b", re.IGNORECASE)

# task name -> fn(answer text, scene) -> critique
CRITICS: Registry[Callable[[str, Mapping[str, Any]], str]] = Registry("shapes critique task")


def counted(obj: ObjectType, count: int | None, article: str = "a") -> str:
    """``(("red", "circle"), 2)`` → ``"two red circles"`` (``"the two ..."`` with article "the"); count 1 or
    None → ``"<article> red circle"``."""
    name = f"{obj[0]} {obj[1]}"
    if count is None or count == 1:
        return f"{article} {name}"
    return f"{'the ' if article == 'the' else ''}{NUMBER_WORDS.get(count, str(count))} {name}s"


def _sentence(problems: Sequence[str]) -> str:
    text = "; ".join(problems)
    return text[0].upper() + text[1:] + "."


def _where(position: str) -> str:
    return "in the middle" if position == "middle" else f"on the {position}"


@CRITICS.register("caption")
def caption_critique(text: str, scene: Mapping[str, Any]) -> str:
    """Each claimed object type that is absent, each wrong count, each present object denied, then each
    present type the answer never names, left to right ("misses ..."); :data:`CORRECT` when there is nothing
    to say."""
    truth = objects_of(scene)  # (colour, shape) -> count
    problems: list[str] = []
    named: set[ObjectType] = set()
    for m in parse_mentions(text):
        if m.obj in named:
            continue
        named.add(m.obj)
        if m.negated:
            if m.obj in truth:
                problems.append(f"denies {counted(m.obj, truth[m.obj], 'the')} that the image shows")
            continue
        if m.obj not in truth:
            problems.append(f"mentions {counted(m.obj, m.count)} that is not in the image"
                            if m.count in (None, 1) else f"mentions {counted(m.obj, m.count)} that are not in the image")
        elif m.count is not None and m.count != truth[m.obj]:
            problems.append(f"says {counted(m.obj, m.count)} but the image shows {counted(m.obj, truth[m.obj], 'one')}")
    missing = [t for t in positions_of(scene) if t not in named]  # left to right, as captions list them
    problems += [f"misses {counted(t, truth[t], 'the')}" for t in missing]
    return _sentence(problems) if problems else CORRECT


@CRITICS.register("position")
def position_critique(text: str, scene: Mapping[str, Any]) -> str:
    """Where the answer puts the object against where it is (the answer to "Where is the X?")."""
    mentions = [m for m in parse_mentions(text) if not m.negated]
    if not mentions:
        return "Names no object, so it does not say where the object is."
    obj = mentions[0].obj
    name = f"{obj[0]} {obj[1]}"
    places = positions_of(scene).get(obj)
    if not places:
        return _sentence([f"mentions {counted(obj, 1)} that is not in the image"])
    found = _POSITION_RE.search(text)
    if found is None:
        return _sentence([f"does not say where the {name} is; it is {_where(places[0])}"])
    claimed = (found.group(1) or found.group(2)).lower()
    if claimed in places:
        return CORRECT_POSITION.format(obj=name, where=_where(claimed))
    return _sentence([f"puts the {name} {_where(claimed)}; it is {_where(places[0])}"])


def shapes_critique(text: str, meta: Mapping[str, Any], row: int | None = None) -> str:
    """The critique of ``text`` for a Shapes record's ``meta`` (its ``scene`` and ``task``)."""
    where = f"row {row}: " if row is not None else ""
    scene = meta.get("scene")
    if scene is None:
        raise ValueError(f"{where}no meta['scene'] to write a critique from; Shapes critiques need the scene's "
                         "ground truth (use preference.jsonl / preference_eval.jsonl of `vlalign data shapes`)")
    task = meta.get("task", "caption")
    try:
        critic = CRITICS.get(task)
    except KeyError as exc:
        raise ValueError(f"{where}meta['task'] is {task!r}: {exc.args[0]} Fix: keep only caption/position rows") from None
    return critic(text, scene)


def with_shapes_critiques(records: Sequence[Any]) -> list[PreferenceRecord]:
    """Shapes preference records with ``critique`` filled in for both answers (other fields unchanged)."""
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, PreferenceRecord):
            raise TypeError(f"row {i} (id {rec.id!r}) is a {type(rec).__name__}; critiques are written for "
                            "preference pairs (chosen + rejected)")
        labels = CritiqueLabels(shapes_critique(rec.chosen, rec.meta, i), shapes_critique(rec.rejected, rec.meta, i))
        out.append(dataclasses.replace(rec, critique=labels))
    return out


def write_critique_file(path: str | Path, out: str | Path) -> int:
    """Copy a Shapes preference JSONL to ``out`` with ``critique`` filled in on every row; returns the row
    count. Relative image paths are rewritten to point at the same files from ``out``'s folder."""
    path, out = Path(path), Path(out)
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    for i, row in enumerate(rows):
        if not isinstance(row.get("chosen"), str) or not isinstance(row.get("rejected"), str):
            raise TypeError(f"row {i}: no `chosen` / `rejected` text; critiques are written for preference pairs")
        meta = row.get("meta") or {}
        row["critique"] = {"chosen": shapes_critique(row["chosen"], meta, i),
                           "rejected": shapes_critique(row["rejected"], meta, i)}
        row["images"] = [os.path.relpath(path.parent / ref, out.parent)
                         if isinstance(ref, str) and not os.path.isabs(ref) else ref for ref in row.get("images") or []]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return len(rows)
