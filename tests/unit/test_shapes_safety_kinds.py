"""Shapes' safety split with the harm in either modality: the text-harm files keep their rows (now with
``kind``), and the image-harm files pair each hazard-sign request with the same kind of text on an
info sign, so only the image tells them apart."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlalign.data.records import from_dict
from vlalign.data.shapes import ShapesConfig, generate_shapes
from vlalign.data.shapes.safety import SIGN_TEMPLATES, draw_sign


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("shapes_safety")
    generate_shapes(out, ShapesConfig(seed=2, n_train=20, n_eval=8, n_safety=8, n_safety_eval=4,
                                      n_safety_image=8, n_safety_image_eval=6))
    return out


def _rows(path):
    return [from_dict(json.loads(line)) for line in path.read_text().splitlines()]


def test_text_kind_rows_are_marked(bench):
    for r in _rows(bench / "safety_prompts_eval.jsonl"):
        harm = r.meta["safety"]
        assert harm["kind"] == ("text" if harm["harmful"] else "benign")
        if harm["harmful"]:
            assert r.prompt.startswith("[synthetic-harm:")


def test_image_kind_pairs(bench):
    pairs = _rows(bench / "safety_image.jsonl")
    prompts = _rows(bench / "safety_image_prompts_eval.jsonl")
    assert len(pairs) == 8 and len(prompts) == 6
    templates = {t.split("{obj}")[0] for t in SIGN_TEMPLATES}
    for p in pairs:
        harm = p.meta["safety"]
        assert any(p.prompt.startswith(t) for t in templates)  # the text is benign-looking in both kinds
        assert "[synthetic-harm" not in p.prompt
        if harm["harmful"]:
            assert harm["kind"] == "image" and p.meta["sign"] == "hazard" and p.chosen.startswith("I can't")
            assert not p.safety.rejected_safe and p.images[0].endswith("_hazard.png")
        else:
            assert harm["kind"] == "image_benign" and p.meta["sign"] == "info" and p.rejected.startswith("I can't")
            assert p.images[0].endswith("_info.png")
    assert {p.meta["safety"]["kind"] for p in pairs} == {"image", "image_benign"}
    for p in prompts:
        assert (bench / p.images[0]).is_file()
    manifest = json.loads((bench / "manifest.json").read_text())
    assert manifest["counts"]["safety_image_prompts_eval.jsonl"] == 6


def test_hazard_and_info_signs_differ_only_in_the_corner():
    img = Image.new("RGB", (64, 64), (245, 245, 245))
    hazard, info = np.asarray(draw_sign(img, True)), np.asarray(draw_sign(img, False))
    side = 64 // 4
    assert not np.array_equal(hazard[:side, :side], info[:side, :side])
    assert np.array_equal(hazard[side:], info[side:]) and np.array_equal(hazard[:, side:], info[:, side:])
    assert np.array_equal(hazard[side:], np.asarray(img)[side:])  # the scene outside the corner is untouched


def test_generation_is_deterministic(bench, tmp_path):
    generate_shapes(tmp_path, ShapesConfig(seed=2, n_train=20, n_eval=8, n_safety=8, n_safety_eval=4,
                                           n_safety_image=8, n_safety_image_eval=6))
    for name in ("safety_image.jsonl", "safety_image_prompts_eval.jsonl", "safety_prompts.jsonl"):
        assert (tmp_path / name).read_bytes() == (bench / name).read_bytes()
    img = min((bench / "images").glob("*_hazard.png"))
    assert (tmp_path / "images" / img.name).read_bytes() == img.read_bytes()
