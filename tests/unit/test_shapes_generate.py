"""Shapes benchmark generation: determinism, ground truth vs pixels, bias rate, segment spans."""

from __future__ import annotations

import json
from collections import deque
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlalign.data.records import Segment, from_dict
from vlalign.data.shapes import ShapesConfig, generate_shapes, objects_of
from vlalign.data.shapes.scene import BACKGROUND, COLORS
from vlalign.data.shapes.text import apply_segments
from vlalign.evaluation.hallucination import caption_objects

SMALL = {"n_train": 300, "n_eval": 60, "n_safety": 40, "n_safety_eval": 10}


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shapes_a")
    generate_shapes(out, ShapesConfig(seed=3, bias=0.5, **SMALL))
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_byte_identical_and_other_seed_differs(bench, tmp_path):
    generate_shapes(tmp_path / "b", ShapesConfig(seed=3, bias=0.5, **SMALL))
    generate_shapes(tmp_path / "c", ShapesConfig(seed=4, bias=0.5, **SMALL))
    a, b, c = _all_files(bench), _all_files(tmp_path / "b"), _all_files(tmp_path / "c")
    assert len(a) > 300 and a == b
    assert a.keys() == c.keys()
    assert a["scenes.jsonl"] != c["scenes.jsonl"]
    assert a["images/train_00000.png"] != c["images/train_00000.png"] or a["sft.jsonl"] != c["sft.jsonl"]


def _blobs(rgb: np.ndarray) -> int:
    """Connected components (4-neighbour) of non-background pixels."""
    fg = np.any(rgb != np.array(BACKGROUND), axis=-1)
    seen = np.zeros_like(fg)
    n = 0
    for y0, x0 in zip(*np.nonzero(fg)):
        if seen[y0, x0]:
            continue
        n += 1
        q = deque([(y0, x0)])
        seen[y0, x0] = True
        while q:
            y, x = q.popleft()
            for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                yy, xx = y + dy, x + dx
                if 0 <= yy < fg.shape[0] and 0 <= xx < fg.shape[1] and fg[yy, xx] and not seen[yy, xx]:
                    seen[yy, xx] = True
                    q.append((yy, xx))
    return n


def test_ground_truth_matches_pixels(bench):
    scenes = _rows(bench / "scenes.jsonl")
    assert len(scenes) == 360
    for sc in scenes[::12]:  # 30 scenes
        rgb = np.asarray(Image.open(bench / sc["image"]).convert("RGB"))
        assert _blobs(rgb) == len(sc["objects"]), sc["id"]
        for o in sc["objects"]:
            assert tuple(rgb[o["y"], o["x"]]) == COLORS[o["color"]], (sc["id"], o)
            # A square fills its bbox corner; circles and triangles leave it empty.
            corner_filled = tuple(rgb[o["bbox"][3], o["bbox"][0]]) == COLORS[o["color"]]
            top_corner_filled = tuple(rgb[o["bbox"][1], o["bbox"][0]]) == COLORS[o["color"]]
            assert top_corner_filled == (o["shape"] == "square"), (sc["id"], o)
            assert corner_filled == (o["shape"] in ("square", "triangle")), (sc["id"], o)


def test_bias_rate_close_to_configured(tmp_path):
    generate_shapes(
        tmp_path, ShapesConfig(seed=1, n_train=1500, n_eval=10, bias=0.6, n_safety=0, n_safety_eval=0)
    )
    caps = [r for r in _rows(tmp_path / "sft.jsonl") if r["meta"]["task"] == "caption"]
    eligible = [r for r in caps if objects_of(r["meta"]["scene"])[("red", "circle")]
                and not objects_of(r["meta"]["scene"])[("blue", "square")]]  # fmt: skip
    biased = [r for r in eligible if ("blue", "square") in caption_objects(r["reference"])]
    assert len(eligible) > 150
    assert abs(len(biased) / len(eligible) - 0.6) < 0.1
    # meta names exactly the fake objects; nothing else in any caption is false
    for r in caps:
        truth = set(objects_of(r["meta"]["scene"]))
        fake = {tuple(o.split()) for o in r["meta"]["biased_objects"]}
        assert caption_objects(r["reference"]) - truth == fake
    yes_no = [r for r in _rows(tmp_path / "sft.jsonl") if r["meta"]["task"] == "yes_no"]
    for r in yes_no:  # yes/no answers stay truthful
        present = tuple(r["meta"]["object"].split()) in objects_of(r["meta"]["scene"])
        assert r["reference"] == ("Yes." if present else "No.")


@pytest.mark.parametrize("name", ["preference.jsonl", "preference_eval.jsonl"])
def test_rejected_segments_inside_text_and_correct_to_chosen(bench, name):
    rows = _rows(bench / name)
    kinds = set()
    for row in rows:
        rec = from_dict(row)
        assert rec.rejected != rec.chosen
        for s in rec.rejected_segments:
            assert 0 <= s.start <= s.end <= len(rec.rejected)
            kinds.add(s.kind)
        fixed, landed = apply_segments(rec.rejected, rec.rejected_segments)
        assert fixed == rec.chosen
        assert [(s.start, s.end) for s in landed] == [(s.start, s.end) for s in rec.chosen_segments]
        if rec.meta["task"] == "caption":  # the chosen caption names exactly the scene's objects
            assert caption_objects(rec.chosen) == set(objects_of(rec.meta["scene"]))
    assert kinds >= {"object", "color", "count", "position"}


def test_pope_splits_labels_and_adversarial_companion(bench):
    for split in ("random", "popular", "adversarial"):
        rows = _rows(bench / f"pope_{split}.jsonl")
        labels = [r["meta"]["label"] for r in rows]
        assert labels.count("yes") == labels.count("no") > 0
        for r in rows:
            present = tuple(r["meta"]["object"].split()) in objects_of(r["meta"]["scene"])
            assert present == (r["meta"]["label"] == "yes")
            assert r["meta"]["scene"]["split"] == "eval"
    adv = _rows(bench / "pope_adversarial.jsonl")
    trig = {r["meta"]["scene"]["id"] for r in adv if objects_of(r["meta"]["scene"])[("red", "circle")]
            and not objects_of(r["meta"]["scene"])[("blue", "square")]}  # fmt: skip
    asked = {r["meta"]["scene"]["id"] for r in adv if r["meta"]["object"] == "blue square"}
    assert trig and trig <= asked


def test_safety_and_eval_splits(bench):
    pairs = [from_dict(r) for r in _rows(bench / "safety.jsonl")]
    assert len(pairs) == 40
    harmful = [p for p in pairs if p.meta["safety"]["harmful"]]
    assert len(harmful) == 20
    for p in harmful:
        assert p.prompt.startswith("[synthetic-harm:") and p.safety.category and p.safety.severity >= 1
        assert not p.safety.rejected_safe and p.chosen.startswith("I can't")
    for p in pairs:
        if not p.meta["safety"]["harmful"]:
            assert p.rejected.startswith("I can't") and p.safety.rejected_safe
    train_ids = {r["id"] for r in _rows(bench / "scenes.jsonl") if r["split"] == "train"}
    evals = _rows(bench / "eval_captions.jsonl")
    assert len(evals) == 60 and not {r["meta"]["scene"]["id"] for r in evals} & train_ids
    manifest = json.loads((bench / "manifest.json").read_text())
    assert manifest["counts"]["sft.jsonl"] == 300 * 3 and manifest["seed"] == 3


def test_loads_with_datasets(bench):
    from datasets import load_dataset

    ds = load_dataset("json", data_files=str(bench / "preference.jsonl"), split="train")
    assert len(ds) == 300 and "rejected_segments" in ds.column_names


def test_cli_writes_files(tmp_path):
    import typer
    from typer.testing import CliRunner

    from vlalign.data.cli import register

    app = typer.Typer()  # only this area's commands: other areas' modules may be mid-edit
    register(app)
    res = CliRunner().invoke(app, ["data", "shapes", "--out", str(tmp_path), "--seed", "2", "--n-train", "20",
                                   "--n-eval", "5", "--bias", "0.3"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "manifest.json").read_text())["bias"]["p"] == 0.3
    bad = CliRunner().invoke(app, ["data", "shapes", "--out", str(tmp_path), "--bias", "2"])
    assert bad.exit_code == 2


def test_segment_type_roundtrip():
    assert apply_segments("ab cd", [Segment(3, 5, "xy", "color")]) == (
        "ab xy",
        [Segment(3, 5, None, "color")],
    )


def test_every_generated_file_passes_validation(bench):
    """The benchmark must be valid input for every trainer: no row may be rejected by the validator."""
    from vlalign.data.validate import load_records

    for path in sorted(p for p in bench.glob("*.jsonl") if p.name != "scenes.jsonl"):  # scenes: ground truth, not records
        result = load_records(path, on_bad_rows="skip")
        assert result.errors == [], (path.name, result.errors[:3])
        assert len(result.records) == result.n_rows > 0


def test_trigger_rate_sets_the_share_of_trigger_scenes(tmp_path):
    def trigger_share(cfg: ShapesConfig, out: Path) -> tuple[float, float]:
        generate_shapes(out, cfg)
        rows = _rows(out / "sft.jsonl") + _rows(out / "eval_captions.jsonl")
        seen = {r["images"][0]: r["meta"]["scene"] for r in rows}
        train = [s for s in seen.values() if s["split"] == "train"]
        evals = [s for s in seen.values() if s["split"] == "eval"]
        def share(ss: list[dict]) -> float:
            return sum(("red", "circle") in objects_of(s) for s in ss) / len(ss)

        return share(train), share(evals)

    cfg = {"n_train": 400, "n_eval": 200, "n_safety": 0, "n_safety_eval": 0, "max_objects": 2}
    natural = trigger_share(ShapesConfig(seed=1, **cfg), tmp_path / "a")
    forced = trigger_share(ShapesConfig(seed=1, trigger_rate=0.4, **cfg), tmp_path / "b")
    # natural: 1 or 2 objects of 12 types -> P(red circle) ~ 1/12 * 1.5 ~ 0.12; forced: 0.4 + 0.6 * ~0.12 ~ 0.47
    assert all(0.05 < s < 0.22 for s in natural), natural
    assert all(0.38 < s < 0.56 for s in forced), forced
