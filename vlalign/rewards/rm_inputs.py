"""What a reward model reads besides (image, prompt, answer): ground-truth facts and the answer to critique.

Both trainers and reward sources build their inputs here, so a model is scored on exactly the text layout
it was trained on.

- **Facts (Fact-RLHF, Sun et al. 2023)**: the prompt is preceded by ``"Facts: ..."`` — reference captions
  or the object list of a Shapes scene — so the reward model can judge agreement with the facts instead of
  guessing from fluency. :func:`facts_of` reads them from a record's or sample's ``meta["facts"]`` (a string
  or a list of strings) or, failing that, ``meta["scene"]``.
- **Critique (MM-RLHF)**: the answer moves into the user turn, followed by :data:`CRITIQUE_INSTRUCTION`; the
  assistant turn is the critique. The scalar head reads the last token of the critique.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

CRITIQUE_INSTRUCTION = "Critique this answer: say what it gets wrong about the image, or that it is correct."
FACTS_PREFIX = "Facts: "


def scene_facts(scene: Mapping[str, Any]) -> str:
    """A Shapes scene's object list as one fact: ``"the image shows a red circle and two blue squares"``."""
    from vlalign.data.shapes.grammar import join_phrases, phrase
    from vlalign.data.shapes.scene import objects_of

    counts = objects_of(scene)
    if not counts:
        return "the image shows no object"
    return "the image shows " + join_phrases([phrase(c, s, n) for (c, s), n in sorted(counts.items())])


def facts_of(meta: Mapping[str, Any], where: str) -> str:
    """The facts of one row as text (facts joined with "; "). ``where`` names the row in the error a row
    without facts gets ("row 3 (id 'x')", "sample 2")."""
    facts = meta.get("facts") if isinstance(meta, Mapping) else None
    if isinstance(facts, str) and facts.strip():
        return facts.strip()
    if isinstance(facts, list | tuple) and facts and all(isinstance(f, str) and f.strip() for f in facts):
        return "; ".join(f.strip() for f in facts)
    if facts is None and isinstance(meta, Mapping) and isinstance(meta.get("scene"), Mapping):
        return scene_facts(meta["scene"])
    raise ValueError(
        f"{where}: the reward model reads facts (model.facts=true, Fact-RLHF) but meta['facts'] is "
        f"{'missing' if facts is None else repr(facts)[:60]} and there is no meta['scene']; fix: give every row "
        "meta.facts (a caption or a list of fact strings), or train/score without facts (model.facts=false)"
    )


def facts_prompt(prompt: str, facts: str) -> str:
    return f"{FACTS_PREFIX}{facts}\n{prompt}"


def critique_prompt(prompt: str, answer: str) -> str:
    return f"{prompt}\n\nAnswer: {answer}\n\n{CRITIQUE_INSTRUCTION}"


def with_user_text(record: Any, edit: Callable[[str], str]) -> Any:
    """A copy of ``record`` whose last user text is ``edit(text)``: the ``prompt`` and, for a conversation,
    the last text part of its last user turn (a text part is appended where that turn has none)."""
    changes: dict[str, Any] = {"prompt": edit(record.prompt)}
    conversation = getattr(record, "conversation", None)
    if conversation:
        conv = copy.deepcopy(conversation)
        turn = next(m for m in reversed(conv) if m["role"] == "user")
        texts = [p for p in turn["content"] if p.get("type") == "text"]
        if texts:
            texts[-1]["text"] = edit(texts[-1]["text"])
        else:
            turn["content"].append({"type": "text", "text": edit("")})
        changes["conversation"] = conv
    return dataclasses.replace(record, **changes)


def record_where(record: Any, row: int) -> str:
    return f"row {row} (id {record.id!r})"


def with_facts(records: list[Any]) -> list[Any]:
    """Records whose prompt starts with their facts (every record must have some; see :func:`facts_of`)."""
    out = []
    for i, rec in enumerate(records):
        facts = facts_of(getattr(rec, "meta", None) or {}, record_where(rec, i))
        out.append(with_user_text(rec, lambda text, f=facts: facts_prompt(text, f)))
    return out


def critique_record(record: Any, answer: str, critique: str | None, suffix: str) -> Any:
    """A prompt record asking to critique ``answer``, with ``critique`` as its reference (the text to learn,
    or to score with); ``suffix`` tells the two answers of a pair apart in the id."""
    from vlalign.data.records import PromptRecord

    asked = with_user_text(record, lambda text: critique_prompt(text, answer))
    return PromptRecord(f"{record.id}/{suffix}", list(record.images), asked.prompt, critique,
                        dict(getattr(record, "meta", None) or {}), asked.conversation)
