"""Reward source ``critique_rm``: a critique reward model (MM-RLHF) writes a critique, then scores with it.

For each sample the model first writes a critique of the response, greedily (the same prompt layout as in
training: :func:`vlalign.rewards.rm_inputs.critique_record`); its scalar head then reads (prompt + image,
response, critique) at the critique's last token. The critiques come back in ``RewardOutput.notes``, so RL
logs and RLAIF labels can show *why* a sample scored as it did. Train the model with ``vlalign rm
model.kind=critique`` (:mod:`vlalign.trainers.critique_rm`).
"""

from __future__ import annotations

from typing import Any

import torch

from vlalign.rewards.base import REWARD_SOURCES, RewardOutput, Sample
from vlalign.rewards.learned import SOURCE_OF_KIND, LoadedScalarModel, _image_ref, load_reward_model

# what the head reads when the model writes nothing (the critique row needs at least one text token)
EMPTY_CRITIQUE = "(no critique)"
NO_CAP = 1 << 30  # tokens: the answer is part of the prompt, which is never cut


class CritiqueReward:
    """Greedy critique, then the head's score. ``max_new_tokens`` bounds the critique; ``facts`` overrides
    whether the prompts carry each sample's facts (None = as the model was trained); ``max_length`` caps
    prompt + answer + critique in tokens when scoring (None = no cap: the answer sits in the prompt, and a
    policy's answer may be longer than the training answers were)."""

    name = "critique_rm"

    def __init__(self, path: str, batch_size: int = 8, device: str = "cpu", max_new_tokens: int = 48,
                 facts: bool | None = None, max_length: int | None = None,
                 loaded: LoadedScalarModel | None = None) -> None:
        self.scorer = loaded if loaded is not None else load_reward_model(path, device)
        if self.scorer.kind != "critique":
            other = SOURCE_OF_KIND.get(self.scorer.kind, "learned")
            raise ValueError(f"{path} holds a {self.scorer.kind} model but source 'critique_rm' needs a critique "
                             f"reward model (vlalign rm model.kind=critique); fix: use source {other!r}")
        if max_new_tokens < 1:
            raise ValueError(f"critique_rm: max_new_tokens must be >= 1, got {max_new_tokens}")
        if facts is not None:
            self.scorer.facts = facts
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.max_length = max_length or NO_CAP

    def critique_rows(self, samples: list[Sample], critiques: list[str | None]) -> list[Any]:
        """One prompt record per sample asking to critique its response, with ``critiques[i]`` as the answer."""
        from vlalign.data.records import PromptRecord
        from vlalign.rewards.rm_inputs import critique_record

        records = [PromptRecord(f"sample_{i}", [_image_ref(im) for im in s.images], s.prompt, None, dict(s.meta))
                   for i, s in enumerate(samples)]  # fmt: skip
        viewed = self.scorer.view(records)
        return [critique_record(r, s.response, c, "critique") for r, s, c in zip(viewed, samples, critiques, strict=True)]

    def write_critiques(self, samples: list[Sample]) -> list[str]:
        """The model's greedy critique of each sample's response."""
        from vlalign.evaluation.generate import GenerationConfig, generate_answers

        cfg = GenerationConfig(max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, do_sample=False)
        rows = self.critique_rows(samples, [None] * len(samples))
        return generate_answers(self.scorer.model.backbone, self.scorer.processor, rows, cfg)

    def score_with(self, samples: list[Sample], critiques: list[str]) -> torch.Tensor:
        """(N,) head scores of the samples read together with the given critiques."""
        from vlalign.data.collate import CollateConfig, EncodedDataset

        rows = self.critique_rows(samples, [c if c.strip() else EMPTY_CRITIQUE for c in critiques])
        dataset = EncodedDataset(rows, self.scorer.processor, CollateConfig(self.max_length), "sft")
        return self.scorer.spec.overall(self.scorer._score(dataset, self.batch_size, 1)[:, 0])  # (N,)

    def score(self, samples: list[Sample]) -> RewardOutput:
        critiques = self.write_critiques(samples)
        scores = self.score_with(samples, critiques)  # (N,)
        lengths = torch.tensor([float(len(c.split())) for c in critiques])  # (N,)
        return RewardOutput(rewards=scores, parts={"critique_rm": scores, "critique_words": lengths},
                            notes=critiques)


REWARD_SOURCES.register("critique_rm", "critique")(CritiqueReward)
