"""On-policy preference pairs labelled by the ground-truth verifier (RLHF-V / RLAIF-V style).

WHY: offline pairs built from synthetic corruptions teach the model to avoid errors it does not
make (a feasibility run found they removed the targeted object but never cut overall CHAIR_i by
40%). Sampling the SFT model itself and correcting ITS answers puts the preference signal exactly
on the hallucinations the model produces: rejected = its own answer, chosen = the same answer with
the wrong spans fixed by :func:`vlalign.rewards.shapes_rules.correct_response` (so the pair differs
only where the error is, and the corrected answer keeps the model's own wording and length).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vlalign.data.records import PreferenceRecord, PromptRecord, Segment
from vlalign.registry import Registry


@dataclass
class PairStats:
    sampled: int  # answers drawn
    hallucinated: int  # answers the verifier corrected (→ pairs)
    correct: int  # answers already right (no pair: nothing to prefer)

    def to_dict(self) -> dict[str, int]:
        return {"sampled": self.sampled, "hallucinated": self.hallucinated, "correct": self.correct}


def fix_caption(rec: PromptRecord, answer: str, add_missing: bool) -> tuple[str, list[Segment]]:
    """Caption: the answer with its wrong spans fixed by the ground-truth verifier."""
    from vlalign.rewards.shapes_rules import correct_response

    return correct_response(answer, rec.meta["scene"], add_missing=add_missing)


def fix_yes_no(rec: PromptRecord, answer: str, add_missing: bool) -> tuple[str, list[Segment]]:
    """Yes/no question: the reference answer when the model's yes/no (POPE's parser) differs from it.
    WHY: caption-only pairs move the shared LM's yes/no answers too (a drift POPE sees); pairs on the
    model's own wrong yes/no answers put that task under the same preference signal."""
    from vlalign.evaluation.hallucination import parse_yes_no

    if rec.reference is None:
        raise ValueError(f"record {rec.id!r}: a yes_no record needs its reference answer to be labelled")
    same = parse_yes_no(answer) == parse_yes_no(rec.reference)
    return (answer, []) if same else (rec.reference, [Segment(0, len(answer), rec.reference, "yes_no")])


# task (record meta["task"]) -> (record, answer, add_missing) -> (corrected answer, rejected segments)
FIXERS: Registry[Callable[[PromptRecord, str, bool], tuple[str, list[Segment]]]] = Registry("on-policy task")
FIXERS.register("caption")(fix_caption)
FIXERS.register("yes_no")(fix_yes_no)


def label_answers(
    records: Sequence[PromptRecord], answers: Sequence[str], add_missing: bool = True
) -> tuple[list[PreferenceRecord], PairStats]:
    """One pair per answer that the verifier changes; answers already correct make no pair.

    ``records[i].meta["scene"]`` is the ground truth of ``answers[i]``; ``meta["task"]`` picks the fixer
    (:data:`FIXERS`: captions, yes/no questions). ``add_missing=False`` only fixes what a caption claims
    (wrong objects removed or corrected) and leaves omissions alone, so the pairs teach "do not claim
    what is not there" without also pushing for longer answers.
    """
    if len(records) != len(answers):
        raise ValueError(f"label_answers: {len(records)} records but {len(answers)} answers")
    pairs: list[PreferenceRecord] = []
    for i, (rec, ans) in enumerate(zip(records, answers)):
        scene = rec.meta.get("scene")
        if not isinstance(scene, dict):
            raise ValueError(f"record {rec.id!r}: meta.scene (ground truth) is missing; on-policy labelling needs it")  # noqa: TRY004
        task = rec.meta.get("task", "caption")
        corrected, segments = FIXERS.get(task)(rec, ans, add_missing)
        if corrected.strip() == ans.strip():
            continue
        pairs.append(
            PreferenceRecord(
                id=f"onpolicy_{rec.id}_{i}",
                images=list(rec.images),
                prompt=rec.prompt,
                chosen=corrected,
                rejected=ans,
                rejected_segments=segments,
                meta={"task": task, "scene": scene, "source": "on_policy"},
            )
        )
    return pairs, PairStats(len(answers), len(pairs), len(answers) - len(pairs))


def sample_onpolicy_pairs(
    model: Any,
    processor: Any,
    records: Sequence[PromptRecord],
    gen_cfg: Any,
    base_dir: str | None,
    seed: int,
    samples_per_prompt: int = 1,
    add_missing: bool = True,
) -> tuple[list[PreferenceRecord], PairStats]:
    """Sample ``samples_per_prompt`` answers per prompt from ``model`` and label them."""
    from vlalign.evaluation.generate import generate_answers

    repeated = [r for r in records for _ in range(samples_per_prompt)]
    answers = generate_answers(model, processor, repeated, gen_cfg, base_dir, seed)
    return label_answers(repeated, answers, add_missing)
