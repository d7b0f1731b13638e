"""Label Studio and Argilla round trips: items out as tasks / records, completed annotations (as each
tool writes its export) back in as judgements, then into training data."""

from __future__ import annotations

import base64
import json
from xml.etree import ElementTree

import pytest
from annotate_support import make_project

from vlalign.annotate.export import export_preferences, store_images, write_export
from vlalign.annotate.interop import EXPORTERS, IMPORTERS, InteropError, utf16_to_codepoints
from vlalign.annotate.judgements import Correction
from vlalign.data.validate import load_records


@pytest.fixture
def project(tmp_path, annotate_data):
    return make_project(f"sqlite:///{tmp_path / 'a.sqlite'}", annotate_data[0], users=())


def _worse_side(task_left: str) -> str:
    """Which screen side shows the source 'rejected' text (it names the wrong colour)."""
    return "left" if task_left != "The image is red." else "right"


def test_utf16_offsets():
    text = "ok 🙂 red"  # the emoji is 1 code point, 2 UTF-16 units
    assert utf16_to_codepoints(text, 3) == 3 and utf16_to_codepoints(text, 5) == 4 and utf16_to_codepoints(text, 9) == 8


def test_label_studio_round_trip(project, tmp_path):
    out, config = EXPORTERS.get("label-studio")(project.store, tmp_path / "ls" / "tasks.json", "")
    tasks = json.loads(out.read_text())
    assert len(tasks) == 6 and set(tasks[0]["data"]) >= {"vlalign_item", "shown_left", "image", "prompt", "left", "right"}
    assert base64.b64decode(tasks[0]["data"]["image"].split(",", 1)[1])[:4] == b"\x89PNG"
    root = ElementTree.fromstring(config.read_text())  # well-formed XML with the tags the import reads
    names = {el.get("name") for el in root.iter()}
    assert {"preference", "tie", "unsafe", "left_errors", "right_correction", "left_correctness"} <= names
    assert "p0" not in out.read_text()  # opaque ids only

    # completed annotations as Label Studio's JSON export writes them (task format docs + tag results)
    t0, t5 = tasks[0], tasks[5]
    worse0 = _worse_side(t0["data"]["left"])
    better0 = "right" if worse0 == "left" else "left"
    start = t0["data"][worse0].index("blue")
    t0["id"], t5["id"] = 1, 6
    t0["annotations"] = [{
        "id": 11, "completed_by": 3, "was_cancelled": False, "lead_time": 4.5, "created_at": "2026-01-02T10:00:00.000000Z",
        "result": [
            {"id": "pw1", "type": "pairwise", "from_name": "preference", "to_name": "left", "value": {"selected": better0}},
            {"id": "reg1", "type": "labels", "from_name": f"{worse0}_errors", "to_name": worse0,
             "value": {"start": start, "end": start + 4, "text": "blue", "labels": ["wrong"]}},
            {"id": "reg1", "type": "textarea", "from_name": f"{worse0}_correction", "to_name": worse0,
             "value": {"start": start, "end": start + 4, "text": ["red"]}},
            {"id": "rt1", "type": "rating", "from_name": f"{better0}_correctness", "to_name": better0, "value": {"rating": 5}},
            {"id": "ch1", "type": "choices", "from_name": "unsafe", "to_name": "prompt", "value": {"choices": [worse0]}},
        ]}, {"id": 12, "completed_by": {"id": 4, "email": "bo@example.org"}, "was_cancelled": True, "result": []}]
    # task 5 ends with an emoji: the span over it is 2 UTF-16 units in Label Studio, 1 code point here
    left5 = t5["data"]["left"]
    n16 = len(left5.encode("utf-16-le")) // 2
    t5["annotations"] = [{"id": 61, "completed_by": 3, "result": [
        {"id": "c", "type": "choices", "from_name": "tie", "to_name": "prompt", "value": {"choices": ["tie"]}},
        {"id": "e", "type": "labels", "from_name": "left_errors", "to_name": "left",
         "value": {"start": n16 - 2, "end": n16, "text": "🙂", "labels": ["wrong"]}}]}]
    out.write_text(json.dumps(tasks))

    report = IMPORTERS.get("label-studio")(project.store, out)
    assert report == {"judgements": 2, "skipped": 0, "new_users": ["ls-3"]}  # the cancelled annotation is not a vote
    j0, j5 = project.store.judgements()
    assert (j0.item_id, j0.annotator, j0.outcome, j0.seconds) == ("p0", "ls-3", "first", 4.5)
    assert j0.corrections == [Correction("second", 13, 17, "red", None)] and j0.unsafe == ["second"]
    assert j0.ratings == {"first": {"correctness": 5}} and j0.time == "2026-01-02T10:00:00.000+00:00"
    assert j5.outcome == "tie" and (j5.corrections[0].start, j5.corrections[0].end) == (len(left5) - 1, len(left5))
    assert IMPORTERS.get("label-studio")(project.store, out)["skipped"] == 2  # re-import adds nothing
    assert len(project.store.judgements()) == 2

    records, _ = export_preferences(project.items, project.store.judgements())
    (rec,) = records
    assert (rec.chosen, rec.rejected, rec.rejected_segments[0].correction) == ("The image is red.", "The image is blue.", "red")
    loaded = load_records(write_export(records, tmp_path / "train" / "pref.jsonl", store_images(project.store)))
    assert loaded.records[0].rejected_segments[0].start == 13


def test_argilla_round_trip(project, tmp_path):
    out, settings = EXPORTERS.get("argilla")(project.store, tmp_path / "ar" / "records.json", "")
    records = json.loads(out.read_text())
    # Record.to_dict() keys of Argilla 2.x
    assert set(records[0]) == {"id", "fields", "metadata", "suggestions", "responses", "vectors"}
    questions = {q["name"]: q for q in json.loads(settings.read_text())["questions"]}
    assert questions["preference"]["labels"] == ["left", "right", "tie"] and questions["left_errors"]["type"] == "span"
    r0 = records[0]
    worse = _worse_side(r0["fields"]["left"])
    better = "right" if worse == "left" else "left"
    start = r0["fields"][worse].index("blue")
    u1, u2 = "7f1c2a9e-0000-4000-8000-000000000001", "0b3d5e7f-0000-4000-8000-000000000002"
    r0["responses"] = {  # what Record.to_dict() writes: question -> [{"value", "user_id"}]
        "preference": [{"value": better, "user_id": u1}, {"value": worse, "user_id": u2}],
        f"{worse}_errors": [{"value": [{"start": start, "end": start + 4, "label": "wrong"}], "user_id": u1}],
        f"{worse}_corrections": [{"value": "red", "user_id": u1}],
        f"{better}_helpfulness": [{"value": 4, "user_id": u1}],
        "unsafe": [{"value": [worse], "user_id": u2}],
    }
    out.write_text(json.dumps(records))
    report = IMPORTERS.get("argilla")(project.store, out)
    assert report == {"judgements": 2, "skipped": 0, "new_users": ["argilla-7f1c2a9e", "argilla-0b3d5e7f"]}
    by = {j.annotator: j for j in project.store.judgements()}
    a, b = by["argilla-7f1c2a9e"], by["argilla-0b3d5e7f"]
    assert (a.outcome, b.outcome) == ("first", "second")
    assert a.corrections == [Correction("second", 13, 17, "red", "wrong")] and a.ratings == {"first": {"helpfulness": 4}}
    assert b.unsafe == ["second"]
    assert IMPORTERS.get("argilla")(project.store, out)["skipped"] == 2
    _, rep = export_preferences(project.items, project.store.judgements())
    assert rep["ties"] == ["p0"]  # one vote each way


def test_imports_refuse_foreign_files(project, tmp_path):
    bad = tmp_path / "other.json"
    bad.write_text(json.dumps([{"data": {"text": "hello"}, "annotations": []}]))
    with pytest.raises(InteropError, match="task 0 has no known vlalign_item"):
        IMPORTERS.get("label-studio")(project.store, bad)
    bad.write_text("{not json")
    with pytest.raises(InteropError, match="not JSON"):
        IMPORTERS.get("argilla")(project.store, bad)
    with pytest.raises(KeyError, match="Did you mean"):
        IMPORTERS.get("label-studi")
