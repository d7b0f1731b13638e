"""Conversations as the sources write them → one normalised message list, kept turn by turn.

Sources spell a chat in several ways: TRL / OpenAI messages (``role`` + ``content`` as text or typed
parts), ShareGPT / LLaMA-Factory turns (``from``: human/gpt/system + ``value``), LLaVA-style text with
``<image>`` tags where the picture goes. Flattening them into one prompt string loses who said what and
where the images were, so every adapter calls :func:`normalize_messages` instead, which returns
``[{"role": "system"|"user"|"assistant", "content": [{"type": "text", "text": ...} | {"type": "image"}]}]``.
The k-th ``{"type": "image"}`` part, counted across the whole conversation, is the row's ``images[k]``.

Problems raise :class:`~vlalign.data.problems.RowProblem` (field, reason, fix), reported against the row. This module knows nothing about models: rendering
through a chat template is :mod:`vlalign.models.chat`'s job.
"""

from __future__ import annotations

import re
from typing import Any

from vlalign.data.problems import RowProblem

ROLES = ("system", "user", "assistant")
# ShareGPT / LLaMA-Factory speaker names → roles. "observation"/"function" turns are tool output shown
# to the model, i.e. input, like a user turn.
_ROLE_ALIASES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "bot": "assistant",
    "model": "assistant", "system": "system", "observation": "user", "function": "user", "tool": "user",
    "function_call": "assistant",
}
IMAGE_TAG = "<image>"
_IMAGE_TAG_RE = re.compile(re.escape(IMAGE_TAG))


MessageProblem = RowProblem  # a malformed conversation is a bad row like any other


def text_part(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


IMAGE_PART: dict[str, Any] = {"type": "image"}


def split_image_tags(text: str) -> list[dict[str, Any]]:
    """``"<image>\\nWhat is it?"`` → ``[image, text("What is it?")]``: tags become image parts in place.

    Whitespace that only separated a tag from the text (LLaVA writes ``<image>\\n``) is dropped, so the
    chat template places its own separator; other text is kept exactly.
    """
    parts: list[dict[str, Any]] = []
    pieces = _IMAGE_TAG_RE.split(text)
    for i, piece in enumerate(pieces):
        if i > 0:
            parts.append(dict(IMAGE_PART))
        if len(pieces) > 1:
            piece = piece.strip("\n") if piece.strip() else ""
        if piece:
            parts.append(text_part(piece))
    return parts


def _parts(content: Any, where: str, image_tags: bool) -> list[dict[str, Any]]:
    """A message's content (string, or list of typed parts) → normalised parts."""
    if isinstance(content, str):
        return split_image_tags(content) if image_tags else ([text_part(content)] if content else [])
    if not isinstance(content, list):
        raise MessageProblem(where, f"content must be text or a list of parts, got {type(content).__name__}",
                             'use a string or [{"type": "text", "text": ...}, {"type": "image"}]')
    out: list[dict[str, Any]] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise MessageProblem(f"{where}[{j}].text", "text part without a string", "give the text as a string")
            out += split_image_tags(text) if image_tags else [text_part(text)]
        elif kind in ("image", "image_url"):
            out.append(dict(IMAGE_PART))
        else:
            raise MessageProblem(f"{where}[{j}]", f"unknown content part {part!r:.80}",
                                 'use {"type": "text", "text": ...} or {"type": "image"}')
    return out


def normalize_message(msg: Any, where: str, image_tags: bool = True) -> dict[str, Any]:
    """One message in any supported spelling → ``{"role", "content": [parts]}``."""
    if not isinstance(msg, dict):
        raise MessageProblem(where, f"message must be an object, got {type(msg).__name__}",
                             'use {"role": ..., "content": ...} or {"from": ..., "value": ...}')
    speaker = msg.get("role", msg.get("from"))
    role = _ROLE_ALIASES.get(str(speaker).lower()) if speaker is not None else None
    if role is None:
        raise MessageProblem(f"{where}.role", f"unknown speaker {speaker!r}",
                             f"use one of {', '.join(sorted(_ROLE_ALIASES))}")
    if "content" in msg:
        content = msg["content"]
    elif "value" in msg:
        content = msg["value"]
    else:
        raise MessageProblem(where, "message has no content", 'add "content" (or ShareGPT "value")')
    return {"role": role, "content": _parts(content, f"{where}.content", image_tags)}


def normalize_messages(value: Any, where: str, image_tags: bool = True) -> list[dict[str, Any]]:
    """A list of messages → normalised list (empty lists and non-lists are problems)."""
    if not isinstance(value, list) or not value:
        raise MessageProblem(where, f"expected a non-empty list of messages, got {value!r:.60}",
                             "give the conversation as a list of messages")
    return [normalize_message(m, f"{where}[{i}]", image_tags) for i, m in enumerate(value)]


def message_text(msg: dict[str, Any]) -> str:
    """The text parts of a normalised message, joined by a space."""
    return " ".join(p["text"] for p in msg["content"] if p.get("type") == "text" and p["text"])


def count_images(messages: list[dict[str, Any]]) -> int:
    return sum(1 for m in messages for p in m["content"] if p.get("type") == "image")


def answer_of(messages: list[dict[str, Any]], where: str) -> str:
    """The text of a one-message answer field (TRL ``chosen: [{"role": "assistant", ...}]``)."""
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise MessageProblem(where, f"expected exactly one assistant message, got {len(messages)} message(s)",
                             "keep earlier turns in the prompt; the answer is one assistant message")
    if count_images(messages):
        raise MessageProblem(where, "an answer cannot contain images", "remove the image part from the answer")
    return message_text(messages[0])


def check_conversation(messages: list[dict[str, Any]], where: str = "conversation") -> None:
    """The turns before an answer: system first if any, alternating user/assistant, ending with user."""
    roles = [m["role"] for m in messages]
    body = roles[1:] if roles and roles[0] == "system" else roles
    if "system" in body:
        raise MessageProblem(where, "a system message may only come first", "move it to the start")
    if not body or body[-1] != "user":
        raise MessageProblem(where, "the turns before the answer must end with a user turn",
                             "the answer (chosen/rejected/completion) follows the last user turn")
    for i in range(1, len(body)):
        if body[i] == body[i - 1]:
            raise MessageProblem(f"{where}[{i + (len(roles) - len(body))}]", f"two {body[i]} turns in a row",
                                 "merge them or insert the missing turn")


def is_single_turn(messages: list[dict[str, Any]]) -> bool:
    """True when the conversation is one user turn with all images before all text — the layout a
    record without ``conversation`` already renders, so it need not be stored."""
    if len(messages) != 1 or messages[0]["role"] != "user":
        return False
    kinds = [p["type"] for p in messages[0]["content"]]
    texts = [p for p in messages[0]["content"] if p["type"] == "text"]
    return kinds == sorted(kinds, key=lambda k: k != "image") and len(texts) == 1


def prompt_and_conversation(messages: list[dict[str, Any]], where: str) -> tuple[str, list[dict[str, Any]] | None]:
    """(text of the last user turn, the conversation or None when it is a plain single turn)."""
    check_conversation(messages, where)
    prompt = message_text(messages[-1])
    return prompt, (None if is_single_turn(messages) else messages)


def last_assistant_split(messages: list[dict[str, Any]], where: str) -> tuple[list[dict[str, Any]], str]:
    """A full chat ending with an assistant turn → (turns before it, its text): SFT rows from chats."""
    if not messages or messages[-1]["role"] != "assistant":
        raise MessageProblem(where, "the conversation does not end with an assistant turn",
                             "end it with the answer to train on, or use a prompt-only format")
    if count_images(messages[-1:]):
        raise MessageProblem(f"{where}[{len(messages) - 1}]", "the answer turn contains an image",
                             "images belong to user turns")
    return messages[:-1], message_text(messages[-1])


def place_images(messages: list[dict[str, Any]], n_images: int, where: str = "images") -> list[dict[str, Any]]:
    """Check that a conversation's image parts match the row's ``n_images`` images.

    Sources that mark positions (``<image>`` tags, typed parts) must mark every image; a conversation
    with no marks at all gets its images at the start of its first user turn (the LLaVA convention).
    """
    marked = count_images(messages)
    if marked == n_images:
        return messages
    if marked == 0:
        first_user = next((i for i, m in enumerate(messages) if m["role"] == "user"), None)
        if first_user is not None:
            out = [dict(m) for m in messages]
            out[first_user] = {"role": "user",
                               "content": [dict(IMAGE_PART) for _ in range(n_images)] + out[first_user]["content"]}
            return out
    raise MessageProblem(where, f"the conversation marks {marked} image(s) but the row has {n_images}",
                         "mark every image with <image> (or an image part) where it belongs, or fix the list")


def user_turn(prompt: str, n_images: int) -> dict[str, Any]:
    """One user turn: ``n_images`` image parts first, then the text (the LLaVA convention)."""
    return {"role": "user", "content": [dict(IMAGE_PART) for _ in range(n_images)] + [text_part(prompt)]}


def record_messages(record: Any) -> list[dict[str, Any]]:
    """The turns before a record's answer: its conversation, or one user turn built from the prompt (also
    for record-like objects without a ``conversation`` attribute)."""
    conversation = getattr(record, "conversation", None)
    return conversation if conversation else [user_turn(record.prompt, len(record.images))]


def drop_first_exchange(messages: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
    """The conversation without its oldest text-only exchange (a user turn + the assistant reply), or None
    when there is none to drop. The system message and the last user turn are never dropped, nor any turn
    that shows an image (dropping it would take the image away, not shorten the text)."""
    start = 1 if messages and messages[0]["role"] == "system" else 0
    for i in range(start, len(messages) - 2):
        pair = messages[i : i + 2]
        if [m["role"] for m in pair] == ["user", "assistant"] and not count_images(pair):
            return messages[:i] + messages[i + 2 :]
    return None
