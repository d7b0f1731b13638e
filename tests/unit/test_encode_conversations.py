"""Conversations and several images through the chat template, on LLaVA, Qwen2-VL and Idefics3,
checked on token ids: both turns of a two-turn conversation, both images of a two-image row (and the
model accepts them), whole earlier turns dropped before text is cut, every assistant turn trainable."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlalign.data.collate import CollateConfig, EncodedDataset, default_max_pixels, open_images
from vlalign.data.encode import encode_record
from vlalign.data.records import PreferenceRecord, PromptRecord
from vlalign.models.chat import image_token_id
from vlalign.models.tiny import ARCHITECTURES

IMAGE = {"type": "image"}


def text(t):
    return {"type": "text", "text": t}


def user(*parts):
    return {"role": "user", "content": list(parts)}


def assistant(t):
    return {"role": "assistant", "content": [text(t)]}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("conv_images")
    out = []
    for name, rgb in (("red", (220, 30, 30)), ("blue", (30, 30, 220))):
        Image.new("RGB", (64, 64), rgb).save(folder / f"{name}.png")
        out.append(str(folder / f"{name}.png"))
    return out


@pytest.fixture(scope="module", params=ARCHITECTURES)
def family(request, tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    path = tiny_model_dir(request.param)
    return request.param, AutoProcessor.from_pretrained(path), AutoModelForImageTextToText.from_pretrained(path).eval()


def reference_ids(processor, messages, imgs, add_generation_prompt=True):
    """What the processor itself makes of the messages (independent of vlalign's encoder)."""
    rendered = processor.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=False)
    pil = [Image.open(p).convert("RGB") for p in imgs]
    kwargs = {"images": [pil]} if pil else {}
    return processor(text=[rendered.rstrip() if not add_generation_prompt else rendered], return_tensors="pt",
                     **kwargs)["input_ids"][0].tolist()


def runs(ids, token):
    """How many maximal runs of ``token`` the ids hold (one per image block)."""
    return sum(1 for i, t in enumerate(ids) if t == token and (i == 0 or ids[i - 1] != token))


def test_two_turn_conversation_keeps_both_turns(family, images):
    _, processor, _ = family
    conv = [user(IMAGE, text("What colour is the square?")), assistant("It is red."), user(text("Are you sure?"))]
    rec = PreferenceRecord("c", images[:1], "Are you sure?", "Yes.", "No.", conversation=conv)
    enc = encode_record(processor, rec, 0, CollateConfig(max_length=4096), "pair")
    assert enc.prompt_ids == reference_ids(processor, conv, images[:1])
    first_exchange = reference_ids(processor, conv[:2], images[:1], add_generation_prompt=False)
    assert enc.prompt_ids[: len(first_exchange)] == first_exchange  # turn 1 (question + answer) is all there ...
    last_only = encode_record(processor, PreferenceRecord("c", images[:1], "Are you sure?", "Yes.", "No."), 0,
                              CollateConfig(max_length=4096), "pair")
    assert len(enc.prompt_ids) > len(first_exchange) and enc.prompt_ids != last_only.prompt_ids  # ... then turn 2
    assert enc.dropped_turns == 0


def test_two_image_row_keeps_both_images_where_they_are(family, images):
    name, processor, model = family
    conv = [user(IMAGE, text("Compare this one with"), IMAGE, text("that one."))]
    two = PreferenceRecord("two", images, "that one.", "Red, then blue.", "Both red.", conversation=conv)
    one = PreferenceRecord("one", images[:1], "Compare.", "Red.", "Blue.")
    cfg = CollateConfig(max_length=4096)
    enc2, enc1 = encode_record(processor, two, 0, cfg, "pair"), encode_record(processor, one, 1, cfg, "pair")
    img = image_token_id(processor)
    assert enc2.prompt_ids.count(img) == 2 * enc1.prompt_ids.count(img) > 0
    assert runs(enc2.prompt_ids, img) == 2  # two separate image blocks, text between them
    assert enc2.prompt_ids == reference_ids(processor, conv, images)
    counts = {"pixel_values": enc2.image_inputs["pixel_values"].shape[0 if name != "idefics3" else 1]}
    if "image_grid_thw" in enc2.image_inputs:
        counts["image_grid_thw"] = enc2.image_inputs["image_grid_thw"].shape[0]
    assert all(v == 2 for k, v in counts.items() if name != "qwen2_vl" or k == "image_grid_thw"), counts
    batch = EncodedDataset([two, one], processor, cfg, "pair").batch([0, 1])
    with torch.no_grad():  # the model itself checks that image tokens and image features match
        out = model(**batch.inputs)
    assert torch.isfinite(out.logits).all()


def test_truncation_drops_earlier_turns_before_cutting_text(images, tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir("llava"))
    long = "The square in the picture is painted a deep shade of red. " * 3
    conv = [user(IMAGE, text("Describe the picture.")), assistant(long),  # shows the image: never dropped
            user(text("Tell me more.")), assistant(long),  # text only: dropped first
            user(text("And the colour?"))]
    rec = PreferenceRecord("t", images[:1], "And the colour?", "Red.", "Blue.", conversation=conv)
    full = encode_record(processor, rec, 0, CollateConfig(max_length=4096), "pair")
    without_middle = reference_ids(processor, conv[:2] + conv[4:], images[:1])
    limit = len(without_middle) + max(len(r) for r in full.responses)  # fits only without the middle exchange
    enc = encode_record(processor, rec, 0, CollateConfig(max_length=limit), "pair")
    assert enc.dropped_turns == 1 and enc.prompt_ids == without_middle
    assert enc.responses == full.responses  # nothing cut from the answers
    tight = encode_record(processor, rec, 0, CollateConfig(max_length=len(without_middle) + 2), "pair")
    assert tight.prompt_ids == without_middle and [len(r) for r in tight.responses] == [2, 2]  # then text is cut
    assert tight.prompt_ids.count(image_token_id(processor)) == full.prompt_ids.count(image_token_id(processor))


def test_every_assistant_turn_can_be_trained(images, tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir("llava"))
    conv = [user(IMAGE, text("Colour?")), assistant("Red."), user(text("Shape?"))]
    rec = PromptRecord("s", images[:1], "Shape?", reference="A square.", conversation=conv)
    last = EncodedDataset([rec], processor, CollateConfig(max_length=512), "sft").batch([0])
    every = EncodedDataset([rec], processor, CollateConfig(max_length=512, assistant_turns="all"), "sft").batch([0])
    ids = every.inputs["input_ids"][0]
    assert torch.equal(ids, last.inputs["input_ids"][0])  # same tokens, only the mask differs
    tok = processor.tokenizer
    assert tok.decode(ids[last.response_mask[0]]) == "A square.</s>"
    assert tok.decode(ids[every.response_mask[0]]) == "Red.</s>A square.</s>"


def test_images_are_capped_to_the_processor_limit_by_default(tmp_path, tiny_model_dir):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(tiny_model_dir("llava"))
    Image.new("RGB", (3000, 1500), (10, 20, 30)).save(tmp_path / "big.png")
    (img,) = open_images(processor, PromptRecord("b", [str(tmp_path / "big.png")], "Q"), CollateConfig())
    cap = default_max_pixels(processor)  # CLIP resizes the short side to 64: (4*64)^2 = 65,536 px, floor 1024^2
    assert cap == 1024 * 1024 and img.width * img.height <= cap and img.size[0] == 2 * img.size[1]
    Image.new("RGB", (448, 448), (10, 20, 30)).save(tmp_path / "photo.png")
    (small,) = open_images(processor, PromptRecord("p", [str(tmp_path / "photo.png")], "Q"), CollateConfig())
    assert small.size == (448, 448)  # ordinary images reach the processor untouched
