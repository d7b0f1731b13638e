"""ShareGPT / LLaMA-Factory conversations: SFT, preference (``chosen``/``rejected``) and KTO rows.

Real layout (LLaMA-Factory ``data/README.md``, ``formatting: sharegpt``; e.g. ``llamafactory/RLHF-V``):
``conversations`` — a list of ``{"from": "human"|"gpt"|"system"|"observation"|"function_call",
"value": ...}`` — or ``messages`` with OpenAI ``{"role", "content"}``; optional ``system`` (a system
prompt column) and ``images`` (paths relative to the data folder, or ``image_root``); image positions
are ``<image>`` tags in the text (no tags: images open the first user turn).
- preference (``ranking: true``): the conversation ends with a human turn; ``chosen`` / ``rejected`` are
  one ``{"from": "gpt", "value": ...}`` message each (a plain string is accepted too);
- KTO: the conversation ends with the answer and ``kto_tag`` (true = desirable);
- SFT: the conversation ends with the answer (``reference``); earlier answers stay in ``conversation``
  and are trained too when ``data.assistant_turns=all``.
"""

from __future__ import annotations

from typing import Any

from vlalign.data.formats.base import Format, RowContext, RowProblem, image_refs, parse_bool, register_format
from vlalign.data.messages import (
    answer_of,
    last_assistant_split,
    normalize_message,
    normalize_messages,
    place_images,
    prompt_and_conversation,
)
from vlalign.data.records import PreferenceRecord, PromptRecord, Record, UnpairedRecord

_TURN_KEYS = ("conversations", "messages")
_EXCLUDE = {"output_1", "output_2", "preference", "prompt", "meta"}  # LLaVA-RLHF, TRL, canonical rows


def chat_of(row: dict[str, Any], ctx: RowContext) -> tuple[list[dict[str, Any]], list[str | bytes]]:
    """The row's conversation (system column prepended) with its images placed, and the images."""
    key = next(k for k in _TURN_KEYS if k in row)
    messages = normalize_messages(row[key], key)
    if row.get("system"):
        if not isinstance(row["system"], str):
            raise RowProblem("system", f"expected text, got {type(row['system']).__name__}")
        messages = [{"role": "system", "content": [{"type": "text", "text": row["system"]}]}, *messages]
    images = image_refs(row["images"], ctx, "images") if row.get("images") else []
    return place_images(messages, len(images)), images


def answer_field(value: Any, key: str) -> str:
    """``chosen`` / ``rejected``: one message object, a one-message list, or plain text."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return answer_of([normalize_message(value, key)], key)
    if value is None:
        raise RowProblem(key, "missing field", f'add {key!r} as {{"from": "gpt", "value": ...}}')
    return answer_of(normalize_messages(value, key), key)


def convert_sharegpt(row: dict[str, Any], ctx: RowContext) -> list[Record]:
    messages, images = chat_of(row, ctx)
    rid = str(row.get("id", ctx.default_id("sharegpt")))
    if "chosen" in row or "rejected" in row:
        prompt, conversation = prompt_and_conversation(messages, "conversations")
        chosen, rejected = answer_field(row.get("chosen"), "chosen"), answer_field(row.get("rejected"), "rejected")
        return [PreferenceRecord(rid, images, prompt, chosen, rejected, conversation=conversation)]
    before, answer = last_assistant_split(messages, "conversations")
    prompt, conversation = prompt_and_conversation(before, "conversations")
    if "kto_tag" in row:
        label = parse_bool(row["kto_tag"], "kto_tag")
        return [UnpairedRecord(rid, images, prompt, answer, label, conversation=conversation)]
    return [PromptRecord(rid, images, prompt, reference=answer, conversation=conversation)]


def detect_sharegpt(keys: set[str]) -> bool:
    return bool(keys & set(_TURN_KEYS)) and not keys & _EXCLUDE


SHAREGPT = register_format(
    Format(
        name="sharegpt",
        description="ShareGPT / LLaMA-Factory: conversations|messages (+ chosen/rejected | kto_tag), images, system",
        detect=detect_sharegpt,
        convert=convert_sharegpt,
        signature="conversations or messages, without prompt/output_1/preference/meta",
    )
)
