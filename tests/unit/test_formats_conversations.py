"""The conversation formats (ShareGPT/LLaMA-Factory, TRL messages, LLaVA-RLHF, MM-RLHF) and the Hub
layouts of RLAIF-V / VLFeedback / SPA-VL: turns kept, images placed, bad rows reported by index."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
from data_support import png_bytes, write_hub_layout

from vlalign.data.formats import detect_format
from vlalign.data.io import iter_rows
from vlalign.data.records import PreferenceRecord, PromptRecord, UnpairedRecord
from vlalign.data.validate import load_records

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "formats"
RED, BLUE = str(FIX / "images" / "red.png"), str(FIX / "images" / "blue.png")
IMAGE, TEXT = {"type": "image"}, lambda t: {"type": "text", "text": t}


@pytest.mark.parametrize("name,fmt", [("sharegpt.jsonl", "sharegpt"), ("llava_rlhf.json", "llava_rlhf"),
                                      ("mm_rlhf.jsonl", "mm_rlhf"), ("trl_conversation.jsonl", "trl")])
def test_detected(name, fmt):
    assert {detect_format(raw.data.keys()) for raw in iter_rows(FIX / name)} == {fmt}


def test_sharegpt_preference_sft_and_kto():
    pref, two_images, sft, kto = load_records(FIX / "sharegpt.jsonl").records
    assert isinstance(pref, PreferenceRecord) and (pref.chosen, pref.rejected) == ("Yes, it is red.", "No, it is blue.")
    assert pref.prompt == "Are you sure?" and pref.images == [RED]
    assert pref.conversation == [  # both earlier turns kept, the image where the <image> tag was
        {"role": "user", "content": [IMAGE, TEXT("What colour is the square?")]},
        {"role": "assistant", "content": [TEXT("It is red.")]},
        {"role": "user", "content": [TEXT("Are you sure?")]},
    ]
    assert two_images.images == [RED, BLUE]
    assert two_images.conversation == [  # interleaved: text, image, text, image, text; system prompt first
        {"role": "system", "content": [TEXT("You describe colours.")]},
        {"role": "user", "content": [TEXT("Compare "), IMAGE, TEXT(" with "), IMAGE, TEXT(".")]},
    ]
    assert isinstance(sft, PromptRecord) and sft.reference == "A red square." and sft.conversation is None
    assert sft.prompt == "Describe it."  # a plain single turn needs no conversation
    assert isinstance(kto, UnpairedRecord) and (kto.completion, kto.label) == ("Blue.", False)


def test_trl_conversational_multi_turn_two_images_and_prompt_only():
    multi, prompt_only = load_records(FIX / "trl_conversation.jsonl").records
    assert (multi.prompt, multi.chosen, multi.rejected) == ("And this one?", "Blue.", "Green.")
    assert [m["role"] for m in multi.conversation] == ["system", "user", "assistant", "user"]
    assert multi.conversation[3]["content"] == [TEXT("And this one?"), IMAGE]  # the second image after the text
    assert multi.images == [RED, BLUE]
    assert isinstance(prompt_only, PromptRecord) and prompt_only.conversation is None


def test_llava_rlhf_preference_and_earlier_turns():
    first, second = load_records(FIX / "llava_rlhf.json", image_root=str(FIX / "images")).records
    assert (first.chosen, first.rejected) == ("It is red.", "It is blue.")  # preference 2 → output_2 chosen
    assert [m["role"] for m in first.conversation] == ["user", "assistant", "user"]
    assert first.conversation[0]["content"] == [IMAGE, TEXT("What is in the picture?")]
    assert first.images == [RED]
    assert (second.chosen, second.conversation) == ("A blue square.", None)


def test_mm_rlhf_pairs_skip_video_and_ties():
    res = load_records(FIX / "mm_rlhf.jsonl")
    (rec,) = res.records
    assert (rec.prompt, rec.chosen, rec.images) == ("What colour is the square?", "Red.", [RED])
    assert rec.meta["chosen_reason"] == "correct colour"
    assert [(s.row, s.reason.split(" ")[0]) for s in res.skipped] == [(1, "video"), (2, "tied")]


BAD_ROWS = {
    # format: (rows, expected (row, field) of the bad ones)
    "sharegpt": ([
        {"conversations": [{"from": "human", "value": "<image>Q"}], "chosen": {"from": "gpt", "value": "a"},
         "rejected": {"from": "gpt", "value": "b"}, "images": [RED]},
        {"conversations": [{"from": "human", "value": "<image><image>Q"}], "chosen": {"from": "gpt", "value": "a"},
         "rejected": {"from": "gpt", "value": "b"}, "images": [RED]},  # 2 tags, 1 image
        {"conversations": [{"from": "alien", "value": "Q"}], "chosen": "a", "rejected": "b", "images": [RED]},
        {"conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": "x"}], "chosen": "a",
         "rejected": "b", "images": [RED]},  # the turns before an answer must end with the user
    ], {(1, "images"), (2, "conversations[0].role"), (3, "conversations")}),
    "llava_rlhf": ([
        {"id": "a", "image": RED, "conversations": [{"from": "human", "value": "<image>Q"}], "output_1": {"value": "x"},
         "output_2": {"value": "y"}, "preference": 1},
        {"id": "b", "image": RED, "conversations": [{"from": "human", "value": "<image>Q"}], "output_1": {"value": "x"},
         "output_2": {"value": "y"}, "preference": 3},
        {"id": "c", "image": RED, "conversations": [{"from": "human", "value": "<image>Q"}], "output_1": {"value": ""},
         "output_2": {"value": "y"}, "preference": 1},
    ], {(1, "preference"), (2, "output_1")}),
    "mm_rlhf": ([
        {"prompt": "<image>Q", "chosen": "a", "rejected": "b", "image": RED, "chosen_reason": ""},
        {"prompt": "<image>Q", "chosen": "a", "rejected": "a", "image": RED, "chosen_reason": ""},
        {"prompt": "<image><image>Q", "chosen": "a", "rejected": "b", "image": RED, "chosen_reason": ""},
        {"prompt": "Q", "chosen": "a", "rejected": "b", "image": RED, "is_tie": "perhaps"},
    ], {(1, "rejected"), (2, "image"), (3, "is_tie")}),
    "trl": ([
        {"images": [RED], "prompt": [{"role": "user", "content": [IMAGE, TEXT("Q")]}], "chosen": "a", "rejected": "b"},
        {"images": [RED], "prompt": [{"role": "user", "content": [IMAGE, TEXT("Q")]}],
         "chosen": [{"role": "assistant", "content": [TEXT("a")]}, {"role": "user", "content": [TEXT("more")]}],
         "rejected": "b"},  # an answer must be one assistant message
        {"images": [RED], "prompt": [{"role": "user", "content": [{"type": "video"}]}], "chosen": "a", "rejected": "b"},
    ], {(1, "chosen"), (2, "prompt[0].content[0]")}),
}


@pytest.mark.parametrize("fmt", sorted(BAD_ROWS))
def test_bad_rows_of_each_new_format_are_reported_by_index(fmt, tmp_path):
    rows, expected = BAD_ROWS[fmt]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    res = load_records(tmp_path / "d.jsonl", format=fmt, on_bad_rows="skip")
    assert {(e.row, e.field) for e in res.errors} == expected, [e.line() for e in res.errors]
    assert all(e.reason and e.file == str(tmp_path / "d.jsonl") for e in res.errors)
    assert len(res.records) >= 1


def test_vlfeedback_and_spa_vl_hub_layouts(tmp_path):
    """Hub layouts with the image column as an Image feature; VLFeedback's ``completions`` declared as a
    sequence of structs arrives column-wise and is read back as a list."""
    ann = {"Helpfulness": {"Rating": "5", "Rationale": ""}, "Visual Faithfulness": {"Rating": "5", "Rationale": ""},
           "Ethical Considerations": {"Rating": "5", "Rationale": ""}}
    low = {k: {"Rating": "1", "Rationale": ""} for k in ann}
    vlf_features = datasets.Features({
        "id": datasets.Value("string"), "prompt": datasets.Value("string"),
        "models": datasets.Sequence(datasets.Value("string")),
        "completions": datasets.Sequence({
            "annotations": {k: {"Rating": datasets.Value("string"), "Rationale": datasets.Value("string")} for k in ann},
            "model": datasets.Value("string"), "response": datasets.Value("string")}),
        "image": datasets.Image(),
    })
    vlf_rows = [{"id": f"v{i}", "prompt": "Colour?", "models": ["a", "b"], "image": {"bytes": png_bytes(), "path": None},
                 "completions": {"annotations": [ann, low], "model": ["a", "b"], "response": ["Red.", "Blue."]}}
                for i in range(3)]  # Sequence(struct) values are column-wise, as datasets hands them out
    vlf = load_records(write_hub_layout(tmp_path / "vlf", {"train": vlf_rows}, vlf_features))
    assert [(r.id, r.chosen, r.rejected, r.margin) for r in vlf.records] == [(f"v{i}", "Red.", "Blue.", 4.0) for i in range(3)]
    spa_features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                                      "chosen": datasets.Value("string"), "rejected": datasets.Value("string"),
                                      "image_name": datasets.Value("string")})
    spa_rows = [{"image": {"bytes": png_bytes((0, 0, 255)), "path": None}, "question": "Safe?", "chosen": "Yes.",
                 "rejected": "Here is how.", "image_name": f"{i}.jpg"} for i in range(2)]
    spa = load_records(write_hub_layout(tmp_path / "spa", {"train": spa_rows}, spa_features))
    assert [r.meta["image_name"] for r in spa.records] == ["0.jpg", "1.jpg"] and isinstance(spa.records[0].images[0], bytes)
