"""Shapes critiques written from the ground truth: exact strings for hand-written scenes."""

from __future__ import annotations

import json

import pytest

from vlalign.data.shapes.critique import CORRECT, caption_critique, shapes_critique, with_shapes_critiques


def _obj(color, shape, x):
    return {"shape": shape, "color": color, "size": "small", "x": x, "y": 30, "bbox": [x - 8, 22, x + 7, 37]}


# red circle on the left, two blue squares (middle, right) of a 64 px image
SCENE = {"image_size": 64, "objects": [_obj("red", "circle", 10), _obj("blue", "square", 32), _obj("blue", "square", 54)]}


@pytest.mark.parametrize(("text", "critique"), [
    ("The image shows a red circle and two blue squares.", CORRECT),
    ("The image shows two blue squares and a red circle.", CORRECT),  # order does not matter
    ("The image shows a red circle, two blue squares and a green triangle.",
     "Mentions a green triangle that is not in the image."),
    ("The image shows a blue square.", "Says a blue square but the image shows two blue squares; misses the red circle."),
    ("The image shows a yellow circle and two blue squares.",
     "Mentions a yellow circle that is not in the image; misses the red circle."),
    ("The image shows three green triangles.",
     "Mentions three green triangles that are not in the image; misses the red circle; misses the two blue squares."),
    ("There is no red circle, but there are blue squares.", "Denies the red circle that the image shows."),
    ("Nothing to see here.", "Misses the red circle; misses the two blue squares."),
    ("A red circle, a red circle and two blue squares.", CORRECT),  # a repeated mention is judged once
])
def test_caption_critiques(text, critique):
    assert caption_critique(text, SCENE) == critique


@pytest.mark.parametrize(("text", "critique"), [
    ("The red circle is on the left.", "Correct: the red circle is on the left."),
    ("The red circle is in the middle.", "Puts the red circle in the middle; it is on the left."),
    ("The green circle is on the left.", "Mentions a green circle that is not in the image."),
    ("The red circle is somewhere.", "Does not say where the red circle is; it is on the left."),
])
def test_position_critiques(text, critique):
    assert shapes_critique(text, {"task": "position", "scene": SCENE}) == critique


def test_missing_scene_and_unknown_task_name_the_row():
    with pytest.raises(ValueError, match=r"row 4: no meta\['scene'\]"):
        shapes_critique("A red circle.", {"task": "caption"}, row=4)
    with pytest.raises(ValueError, match=r"row 2: meta\['task'\] is 'safety'"):
        shapes_critique("A red circle.", {"task": "safety", "scene": SCENE}, row=2)


def test_generated_pairs_get_critiques_and_the_cli_writes_them(rewards_shapes_dir, tmp_path):
    from typer.testing import CliRunner

    from vlalign.cli import app
    from vlalign.data.validate import load_records

    records = load_records(rewards_shapes_dir / "preference_eval.jsonl").records[:40]
    labelled = with_shapes_critiques(records)
    for rec in labelled:  # every corrupted answer is criticised, every faithful one passes
        assert rec.critique.rejected.split(":")[0] != "Correct", (rec.rejected, rec.critique.rejected)
        assert rec.critique.chosen.startswith("Correct"), (rec.chosen, rec.critique.chosen)
    out = tmp_path / "sub" / "critique_eval.jsonl"
    res = CliRunner().invoke(app, ["data", "critiques", str(rewards_shapes_dir / "preference_eval.jsonl"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    back = load_records(out).records  # relative image paths still resolve from the new folder
    assert [r.critique.rejected for r in back[:40]] == [r.critique.rejected for r in labelled]
    assert json.loads(out.read_text().splitlines()[0])["images"][0].startswith("../")
    res = CliRunner().invoke(app, ["data", "critiques", str(rewards_shapes_dir / "eval_captions.jsonl"), "--out", str(out)])
    assert res.exit_code == 2 and "row 0: no `chosen` / `rejected` text" in res.output, res.output
