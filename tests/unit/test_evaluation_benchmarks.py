"""Benchmark tasks on hand-made fixtures in the official layouts, with canned answers: every metric
equals the value worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_layouts import (
    write_amber,
    write_beavertails_v,
    write_coco_chair,
    write_mm_safetybench,
    write_mmhal,
    write_pope,
    write_spa_vl,
)

from vlalign.evaluation.benchmarks.amber import candidates
from vlalign.evaluation.benchmarks.coco_chair import caption_mentions, singular
from vlalign.evaluation.benchmarks.mmhal import parse_rating
from vlalign.evaluation.benchmarks.pope_official import official_answer
from vlalign.evaluation.context import EvalConfig, EvalContext, EvalDataError, JudgeConfig
from vlalign.evaluation.evaluate import EVAL_TASKS
from vlalign.evaluation.items import intervals


class Canned(EvalContext):
    """An evaluation context whose "model" answers from a table by item id."""

    def __init__(self, data: Path, answers: dict[str, str], **cfg):
        super().__init__(None, None, data, EvalConfig(**cfg))
        self.table, self.prompts = answers, {}

    def generate(self, records, base_dir=None):
        for r in records:
            self.prompts[r.id] = r.prompt
            for im in r.images:  # every image the task points at must exist / open
                if isinstance(im, str):
                    assert Path(im).is_file(), im
        return [self.table[r.id] for r in records]


def run(task: str, ctx: Canned) -> dict[str, float]:
    ctx.task = task
    out = EVAL_TASKS.get(task)(ctx)
    for k, iv in ctx.items.items():  # the per-item values reproduce each reported rate
        assert iv.value() == pytest.approx(out[k], nan_ok=True), k
    cis = intervals(ctx.items, n_boot=200)
    for k, ci in cis.items():
        assert ci.low - 1e-9 <= out[k] <= ci.high + 1e-9, k
    return out


def test_official_pope_answer_rule():
    assert official_answer("No, there is not.") == "no"
    assert official_answer("There is a cat.") == "yes"
    assert official_answer("Yes. No doubt.") == "yes"  # only the first sentence counts
    assert official_answer("") == "yes"
    assert official_answer("I do not think so") == "no"  # "not" is one of the rule's words


def test_pope_official_layout_by_hand(tmp_path):
    root, answers = write_pope(tmp_path)
    ctx = Canned(root, answers)
    m = run("pope", ctx)
    # random: labels yes,no,yes,no,yes; parsed yes,yes,no,no,yes → TP 2 (1,5), FP 1 (2), FN 1 (3), TN 1 (4)
    assert m["pope_random_accuracy"] == pytest.approx(3 / 5)
    assert m["pope_random_precision"] == pytest.approx(2 / 3) and m["pope_random_recall"] == pytest.approx(2 / 3)
    assert m["pope_random_f1_score"] == pytest.approx(2 / 3)  # 2·2 / (2·2 + 1 + 1)
    assert m["pope_random_yes_ratio"] == pytest.approx(3 / 5)
    # adversarial: "No" → no (label no: TN); "I do not think so" → no by the "not" word (label yes: FN)
    assert m["pope_adversarial_accuracy"] == pytest.approx(1 / 2) and m["pope_adversarial_f1_score"] == 0.0
    # all 7: TP 2, FP 1, FN 2, TN 2 → acc 4/7, P 2/3, R 2/4, F1 4/7
    assert m["pope_accuracy"] == pytest.approx(4 / 7) and m["pope_f1_score"] == pytest.approx(4 / 7)
    assert ctx.prompts["random:1"].endswith("Answer the question using a single word or phrase.")


def test_coco_synonyms_and_plurals():
    assert singular("puppies") == "puppy" and singular("benches") == "bench" and singular("people") == "person"
    assert singular("glass") == "glass" and singular("bus") == "bus"
    got = caption_mentions("Two puppies, a baby elephant, a teddy bear and hot dogs on a sofa.")
    # puppies → dog (synonym + plural); "baby elephant" → elephant, not person; teddy bear ≠ bear; hot dogs ≠ dog
    assert [c for _, c in got] == ["dog", "elephant", "teddy bear", "hot dog", "couch"]


def test_coco_chair_by_hand(tmp_path):
    root, answers = write_coco_chair(tmp_path)
    ctx = Canned(root, answers)
    m = run("chair", ctx)
    # image 11 truth {person, dog, bicycle}; "Two puppies and a man next to a surfboard." → dog, person,
    # surfboard: 1 hallucinated of 3 mentions. image 22 truth {cat, couch (from the human caption's
    # "sofa")}; "A kitten ... couch near other kittens." → cat, couch, cat: 0 of 3.
    assert m["coco_cap_chair_i"] == pytest.approx(1 / 6)  # every mention counts
    assert m["coco_cap_chair_s"] == pytest.approx(1 / 2)
    assert m["coco_cap_recall"] == pytest.approx(4 / 5)  # (2 of 3 + 2 of 2) distinct present categories
    hallucinated = {a["id"]: a["hallucinated"] for a in ctx.answers["chair"]}
    assert hallucinated == {"11": ["surfboard"], "22": []}


def test_amber_by_hand(tmp_path):
    root, answers = write_amber(tmp_path)
    m = run("amber", Canned(root, answers))
    # response 1: candidates puppy (covers dog), lawn (covers grass), frisbee (hallucinated, in the
    # hallucination list → Cog), scene (safe word: counted, never hallucinated) → 1 of 4;
    # response 2: kitten (covers cat) → 0 of 1.
    assert m["amber_chair"] == pytest.approx(1 / 5)
    assert m["amber_cover"] == pytest.approx(3 / 3)
    assert m["amber_hal"] == pytest.approx(1 / 2)
    assert m["amber_cog"] == pytest.approx(1 / 3)  # frisbee of {frisbee, car} + nothing of {car}
    # discriminative, positive = "no": truths yes,no,no,yes; answers yes,no,yes,no →
    # TP (no∧no) 1, FP (said no, truth yes) 1, FN (truth no, said yes) 1 → P = R = F1 = 1/2, accuracy 2/4
    assert m["amber_accuracy"] == pytest.approx(0.5) and m["amber_f1"] == pytest.approx(0.5)
    assert m["amber_precision"] == pytest.approx(0.5) and m["amber_recall"] == pytest.approx(0.5)
    assert m["amber_existence_accuracy"] == pytest.approx(1.0) and m["amber_relation_accuracy"] == 0.0
    assert m["amber_score"] == pytest.approx((1 - 0.2 + 0.5) / 2)  # 0.65


def test_amber_candidates_use_vocabulary_phrases():
    assert candidates("Two dogs near a fire hydrant.", {"dog", "fire hydrant", "hydrant"}) == ["dog", "fire hydrant"]


def test_mmhal_with_fixed_judge_by_hand(tmp_path):
    root, answers = write_mmhal(tmp_path)
    judge = JudgeConfig(backend="fixed", backend_kwargs={"replies": ["Fine. Rating: 4", "rating: 1", "I cannot decide"]})
    ctx = Canned(root, answers, judge=judge)
    m = run("mmhal", ctx)
    # ratings 4, 1, unparsed → 0 (as the reference script): mean 5/3, < 3 for two of three
    assert m["mmhal_score"] == pytest.approx(5 / 3)
    assert m["mmhal_hallucination_rate"] == pytest.approx(2 / 3)
    assert m["mmhal_parse_failure_rate"] == pytest.approx(1 / 3)
    assert m["mmhal_score_attribute"] == pytest.approx(2.0) and m["mmhal_score_counting"] == 1.0
    rows = ctx.answers["mmhal"]
    assert rows[2]["raw"] == "I cannot decide" and rows[2]["parse_failure"] is True
    assert "Model answer: A dog." in rows[2]["judge_prompt"] and "Image contents: Cat, Animal" in rows[2]["judge_prompt"]


def test_mmhal_rating_parse():
    assert parse_rating("Because ... Rating: 6") == 6
    assert parse_rating("Rating: 2 or maybe rating: 5") is None  # two ratings: not one answer
    assert parse_rating("5") is None


def test_mmhal_without_judge_says_how_to_set_one(tmp_path):
    root, answers = write_mmhal(tmp_path)
    with pytest.raises(EvalDataError, match="judge.backend"):
        run("mmhal", Canned(root, answers))


def test_safety_benchmarks_by_hand(tmp_path):
    root, answers = write_spa_vl(tmp_path / "spa")
    m = run("safety", Canned(root, answers))
    # harm: refused, complied, refused → 1/3 compliance; help: helped, refused → 1/2 over-refusal
    assert m["spa_vl_harmful_compliance_rate"] == pytest.approx(1 / 3)
    assert m["spa_vl_over_refusal_rate"] == pytest.approx(1 / 2)
    root, answers = write_beavertails_v(tmp_path / "bt")
    m = run("safety", Canned(root, answers))
    # severity 2 → harmful, complied; 1 → harmful, refused; 0 → benign, refused
    assert m["beavertails_v_harmful_compliance_rate"] == pytest.approx(1 / 2)
    assert m["beavertails_v_over_refusal_rate"] == pytest.approx(1.0)
    root, answers = write_mm_safetybench(tmp_path / "mm")
    ctx = Canned(root, answers)
    m = run("safety", ctx)
    # scenario 01: SD complied, SD_TYPO refused, TYPO complied; scenario 10 (legal advice) left out
    assert m["mm_safetybench_harmful_compliance_rate"] == pytest.approx(2 / 3)
    assert m["mm_safetybench_harmful_compliance_rate_sd_typo"] == 0.0
    assert m["mm_safetybench_n_skipped"] == 3.0 and "mm_safetybench_over_refusal_rate" not in m
    assert ctx.prompts["01-Illegal_Activitiy:SD:0"].startswith("The image shows")  # SD ↔ "Rephrased Question(SD)"


def test_layout_errors_name_the_file(tmp_path):
    root, answers = write_pope(tmp_path)
    (root / "coco_pope_random.json").write_text('{"question_id": 1, "image": "x.jpg", "text": "q"}\n')
    with pytest.raises(EvalDataError, match=r"coco_pope_random.json, line 1: missing field\(s\) \['label'\]"):
        run("pope", Canned(root, answers))
    with pytest.raises(EvalDataError, match="not the AMBER layout"):
        run("amber", Canned(tmp_path, {}))
