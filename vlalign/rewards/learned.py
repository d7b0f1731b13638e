"""Load a saved reward / cost model with ONE call and score any batch of samples.

``load_reward_model(dir)`` accepts the training ``output_dir`` or its ``final/`` (or ``adapter/``)
folder; it reads ``reward_model.json`` (written by ``vlalign rm`` / ``cost-model`` / ``rm distill``),
loads the backbone through the shared model loader and restores the scalar head. Registered
sources: ``learned`` (a reward model) and ``cost`` (a Safe RLHF cost model: cost > 0 means unsafe;
``negate: true`` turns it into a reward for a composite). A model trained with ``model.facts: true``
(Fact-RLHF) reads each sample's facts before its prompt, taken from ``Sample.meta`` (``facts`` or the Shapes
``scene``); the sources' ``facts`` option overrides what the saved model says. Critique reward models
(``kind: critique``) are scored by the ``critique_rm`` source (:mod:`vlalign.rewards.critique`).

A reward model with several outputs (:mod:`vlalign.rewards.multi_head`) scores every output at once;
the source reduces them by its options: an ensemble by ``aggregate`` (a name in
``ENSEMBLE_AGGREGATIONS``: ``mean``, ``conservative`` = mean − coef·std, ``penalty`` = mean − coef·variance,
``wco``) with ``coef``, logging ``ensemble_mean`` and ``ensemble_std``; a multi-aspect model by
``aspects`` (one aspect, a list, or {aspect: weight}; unset = its weighted overall score), logging
``aspect/<name>`` for every aspect.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vlalign.rewards.base import REWARD_SOURCES, RewardOutput, Sample
from vlalign.rewards.multi_head import HEAD_KINDS, HeadSpec, check_source_options

META_FILE = "reward_model.json"
# a saved model's kind -> the reward source that scores it (for the error when the wrong one is asked for)
SOURCE_OF_KIND = {"reward": "learned", "cost": "cost", "critique": "critique_rm"}


def resolve_model_dir(path: str | Path) -> Path:
    """The folder holding ``reward_model.json``: ``path`` itself, or its ``final/`` / ``adapter/``."""
    root = Path(path)
    for cand in (root, root / "final", root / "adapter"):
        if (cand / META_FILE).is_file():
            return cand
    raise FileNotFoundError(
        f"{root} holds no saved reward/cost model ({META_FILE} not found in it, final/ or adapter/); "
        "fix: pass the output_dir of `vlalign rm` / `vlalign cost-model`"
    )


def _image_ref(img: Any) -> Any:
    """PIL images become PNG bytes so the shared record encoder can open them like any other ref."""
    from PIL import Image

    if isinstance(img, Image.Image):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
    return img


@dataclass
class LoadedScalarModel:
    """A backbone + scalar head ready to score; ``kind`` is ``reward``, ``cost`` or ``critique``; ``spec`` says
    what the head outputs (one score, an ensemble, aspects); ``facts``: the prompts get each sample's facts in
    front (the layout a Fact-RLHF model was trained on)."""

    model: Any  # vlalign.models.heads.ScalarHeadModel, eval mode
    processor: Any
    kind: str
    path: Path
    max_length: int = 1024
    spec: HeadSpec = field(default_factory=HeadSpec)
    facts: bool = False

    def view(self, records: list[Any]) -> list[Any]:
        """Records as this model reads them (facts in front of the prompt when ``facts``)."""
        from vlalign.rewards.rm_inputs import with_facts

        return with_facts(records) if self.facts else records

    def _dataset(self, records: list[Any], kind: str) -> Any:
        from vlalign.data.collate import CollateConfig, EncodedDataset

        return EncodedDataset(records, self.processor, CollateConfig(self.max_length), kind)

    @torch.no_grad()
    def _score(self, dataset: Any, batch_size: int, k: int) -> torch.Tensor:
        """(N, k, outputs) scores of the k responses of every row."""
        device = next(self.model.parameters()).device
        outputs, out = self.spec.outputs, []
        for start in range(0, len(dataset), batch_size):
            batch = dataset.batch(list(range(start, min(len(dataset), start + batch_size)))).to(device)
            scores = self.model(batch.inputs, batch.response_mask).float()  # (k·b,) or (k·b, outputs), response-major
            out.append(scores.view(k, -1, outputs).transpose(0, 1).cpu())  # (b, k, outputs)
        return torch.cat(out) if out else torch.zeros(0, k, outputs)

    def head_scores(self, samples: list[Sample], batch_size: int = 8) -> torch.Tensor:
        """(N, outputs) every head output for each (images, prompt, response)."""
        from vlalign.data.records import PromptRecord

        records = [PromptRecord(f"sample_{i}", [_image_ref(im) for im in s.images], s.prompt, s.response,
                                dict(s.meta)) for i, s in enumerate(samples)]  # fmt: skip
        return self._score(self._dataset(self.view(records), "score"), batch_size, 1)[:, 0]

    def score_samples(self, samples: list[Sample], batch_size: int = 8) -> torch.Tensor:
        """(N,) overall score of each (images, prompt, response) (:meth:`HeadSpec.overall`)."""
        return self.spec.overall(self.head_scores(samples, batch_size))

    def head_scores_records(self, records: list[Any], batch_size: int = 8) -> torch.Tensor:
        """(N, 2, outputs) every head output for the chosen and rejected answers of preference records."""
        return self._score(self._dataset(self.view(list(records)), "pair"), batch_size, 2)

    def score_records(self, records: list[Any], batch_size: int = 8) -> torch.Tensor:
        """(N, 2) overall scores of the chosen and rejected answers of preference records."""
        raw = self.head_scores_records(records, batch_size)  # (N, 2, outputs)
        return torch.stack([self.spec.overall(raw[:, 0]), self.spec.overall(raw[:, 1])], dim=1)


def load_reward_model(path: str | Path, device: str = "cpu", dtype: str = "float32") -> LoadedScalarModel:
    """Load a reward/cost model saved by vlalign (merged ``final/`` or LoRA ``adapter/``) in one call."""
    from vlalign.models.critique_head import CritiqueHeadModel
    from vlalign.models.heads import ScalarHeadModel, hidden_size_of
    from vlalign.models.load import ModelConfig, load_model, load_processor

    folder = resolve_model_dir(path)
    meta = json.loads((folder / META_FILE).read_text())
    if meta.get("backbone") == "adapter":  # adapter only: base model + LoRA weights
        from peft import PeftModel

        base = load_model(ModelConfig(name_or_path=meta["base_model"], dtype=dtype))  # type: ignore[arg-type]
        backbone = PeftModel.from_pretrained(base.model, str(folder))
        processor = load_processor(ModelConfig(name_or_path=str(folder)))
    else:
        loaded = load_model(ModelConfig(name_or_path=str(folder), dtype=dtype))  # type: ignore[arg-type]
        backbone, processor = loaded.model, loaded.processor
    spec = HeadSpec.from_meta(meta)
    kind = meta.get("kind", "reward")
    head_model = CritiqueHeadModel if kind == "critique" else ScalarHeadModel  # critique: its forward also gives log-probs
    model = head_model(backbone, spec.make_head(hidden_size_of(backbone)))
    model.load_head(folder)
    model = model.to(device).eval()
    return LoadedScalarModel(model, processor, kind, folder, int(meta.get("max_length", 1024)), spec,
                             bool(meta.get("facts", False)))


class LearnedReward:
    """Scores from a trained reward (or cost) model; ``negate`` flips the sign (cost → reward).

    Ensemble models take ``aggregate`` (default ``mean``) and ``coef`` (default 1); multi-aspect models
    take ``aspects`` (see the module docstring). ``parts`` carries the model kind's value before
    ``negate`` plus what the head kind logs (ensemble mean and std, each aspect)."""

    expected_kind: str | None = None

    def __init__(self, path: str, batch_size: int = 8, device: str = "cpu", negate: bool = False,
                 loaded: LoadedScalarModel | None = None, aggregate: str | None = None, coef: float | None = None,
                 aspects: str | list[str] | dict[str, float] | None = None, facts: bool | None = None):
        self.scorer = loaded if loaded is not None else load_reward_model(path, device)
        if self.expected_kind and self.scorer.kind != self.expected_kind:
            other = SOURCE_OF_KIND.get(self.scorer.kind, "learned")
            raise ValueError(f"{path} holds a {self.scorer.kind} model but source {self.name!r} expects a "
                             f"{self.expected_kind} model; fix: use source {other!r}")
        given = {"aggregate": aggregate, "coef": coef, "aspects": aspects}
        self.options = {k: v for k, v in given.items() if v is not None}
        check_source_options(self.scorer.spec, self.options, f"reward source {self.name!r} ({path})")
        if facts is not None:  # None = as the model was trained
            self.scorer.facts = facts
        self.batch_size, self.sign = batch_size, -1.0 if negate else 1.0

    name = "learned"

    def score(self, samples: list[Sample]) -> RewardOutput:
        spec = self.scorer.spec
        heads = self.scorer.head_scores(samples, self.batch_size)  # (N, outputs)
        raw, parts = HEAD_KINDS.get(spec.kind).view(spec, heads, self.options)  # (N,), {name: (N,)}
        return RewardOutput(rewards=self.sign * raw, parts={self.scorer.kind: raw, **parts})


class LearnedCost(LearnedReward):
    """A Safe RLHF cost model as a source: ``rewards`` are costs (> 0 = unsafe) unless ``negate``."""

    name = "cost"
    expected_kind = "cost"


class LearnedRewardOnly(LearnedReward):
    expected_kind = "reward"


REWARD_SOURCES.register("learned", "reward_model")(LearnedRewardOnly)
REWARD_SOURCES.register("cost", "cost_model")(LearnedCost)
