"""Family-agnostic prompt formatting through the processor's own chat template.

WHY: every VLM family spells its turns and image placeholders differently (``USER: <image>``,
``<|vision_start|><|image_pad|><|vision_end|>``, ``<fake_token_around_image>``...). Going through the
chat template means one code path for all of them, and the prompt a model is trained on is the one
it is prompted with at generation time.
"""

from __future__ import annotations

from typing import Any

_SENTINEL = "\u2063VLALIGN_RESPONSE\u2063"


def tokenizer_of(processor: Any) -> Any:
    """The text tokenizer of a processor (or the tokenizer itself)."""
    return getattr(processor, "tokenizer", processor)


def user_message(prompt: str, num_images: int) -> dict[str, Any]:
    """One user turn: ``num_images`` image placeholders first, then the text (the LLaVA convention)."""
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(num_images)]
    content.append({"type": "text", "text": prompt})
    return {"role": "user", "content": content}


def build_prompt(processor: Any, prompt: str, num_images: int) -> str:
    """Text of a user turn with image placeholders, ending with the assistant's generation prompt.

    The processor expands each placeholder into the right number of image tokens when it is called
    with the images.
    """
    if num_images < 0:
        raise ValueError(f"num_images must be >= 0, got {num_images}")
    return processor.apply_chat_template(
        [user_message(prompt, num_images)], add_generation_prompt=True, tokenize=False
    )


def render(processor: Any, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
    """A whole conversation through the family's chat template (turns, roles and image placeholders
    where the messages put them), optionally ending with the assistant's generation prompt."""
    return processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)


def assistant_turn(text: str) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"type": "text", "text": text}]}


def turn_end(processor: Any, messages: list[dict[str, Any]], upto: int) -> str:
    """Text of ``messages[:upto + 1]`` (ending with assistant turn ``upto``) through its end-of-turn
    marker, without what the template writes after it (a newline before the next turn)."""
    full = render(processor, messages[: upto + 1], add_generation_prompt=False)
    suffix = response_suffix(processor)
    cut = full.rfind(suffix) if suffix else -1
    return full[: cut + len(suffix)] if cut >= 0 else full.rstrip()


def response_suffix(processor: Any) -> str:
    """Text that closes an assistant turn (end-of-turn / eos token) to append after a response.

    Found by rendering a conversation with a sentinel response and reading what follows it, so the
    suffix is whatever the family's template writes (``</s>``, ``<|im_end|>``, ``<end_of_utterance>``).
    Trailing whitespace after the end token is dropped: the model should learn to stop, not to
    print a newline. If the template writes nothing, the tokenizer's eos token is used. Remembered on
    the processor per chat template (it is needed for every response of every row).
    """
    template = getattr(processor, "chat_template", None)
    cached = getattr(processor, "_vlalign_response_suffix", None)
    if cached is not None and cached[0] == template:
        return cached[1]
    text = processor.apply_chat_template(
        [user_message("x", 0), {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}],
        add_generation_prompt=False,
        tokenize=False,
    )
    if _SENTINEL not in text:
        raise ValueError("the chat template does not render assistant turns; set model.chat_template")
    suffix = text.split(_SENTINEL, 1)[1].rstrip() or (tokenizer_of(processor).eos_token or "")
    try:
        processor._vlalign_response_suffix = (template, suffix)
    except AttributeError:  # a processor that takes no new attributes: computed each time
        pass
    return suffix


def check_prompt_prefix(processor: Any) -> bool:
    """True when a rendered [user, assistant] conversation starts with the generation prompt.

    Training concatenates ``build_prompt(...) + response + response_suffix(...)``; this checks that
    the concatenation is what the template itself would write.
    """
    prompt = build_prompt(processor, "x", 1)
    full = processor.apply_chat_template(
        [user_message("x", 1), {"role": "assistant", "content": [{"type": "text", "text": _SENTINEL}]}],
        add_generation_prompt=False,
        tokenize=False,
    )
    return full.startswith(prompt)


# Processor attributes that name image-related special tokens in the families we know.
_IMAGE_TOKEN_ATTRS = (
    "image_token",
    "fake_image_token",
    "global_image_tag",
    "global_image_token",
    "image_start_token",
    "image_end_token",
    "vision_start_token",
    "vision_end_token",
    "boi_token",
    "eoi_token",
)


def image_token_ids(processor: Any) -> list[int]:
    """Ids of every token that belongs to an image block (placeholders and their delimiters).

    The collator must never truncate through these: the model checks that the number of image
    placeholders equals the number of image features.
    """
    tok = tokenizer_of(processor)
    ids: set[int] = set()
    for attr in _IMAGE_TOKEN_ATTRS:
        value = getattr(processor, attr, None) or getattr(tok, attr, None)
        if isinstance(value, str):
            tid = tok.convert_tokens_to_ids(value)
            if isinstance(tid, int) and tid != tok.unk_token_id:
                ids.add(tid)
    for attr in ("image_token_id", "vision_start_token_id", "vision_end_token_id"):
        value = getattr(processor, attr, None)
        if isinstance(value, int):
            ids.add(value)
    # Idefics3 row/column tags (<row_1_col_1>...) are plain-looking added tokens.
    for text, tid in tok.get_added_vocab().items():
        if text.startswith(("<row_", "<global-img")):
            ids.add(tid)
    if not ids:
        raise ValueError(f"{type(processor).__name__} exposes no image token; is it a vision-language processor?")
    return sorted(ids)


def image_token_id(processor: Any) -> int:
    """The id of the placeholder that is replaced by image features (one per feature)."""
    value = getattr(processor, "image_token_id", None)
    if isinstance(value, int):
        return value
    tok = tokenizer_of(processor)
    return tok.convert_tokens_to_ids(processor.image_token)
