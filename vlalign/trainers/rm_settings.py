"""The config sections `vlalign rm` adds to the shared ones: what the model reads and how a critique model trains.

``model.kind`` names an entry of :data:`RM_KINDS` (the trainers register themselves in
:mod:`vlalign.trainers.reward_model`), so a new kind of reward model is one registered function.
"""

from __future__ import annotations

from pydantic import Field, field_validator

from vlalign.config import BaseConfig
from vlalign.models.load import ModelConfig
from vlalign.registry import Registry

# model.kind -> fn(cfg, records, stop_after) -> metrics: how `vlalign rm` trains that kind of reward model
RM_KINDS: Registry = Registry("reward model kind")


class RewardModelSettings(ModelConfig):
    """The ``model:`` section of a reward model: the shared loader's settings, the head's width and what the
    model reads (``kind``, ``facts``)."""

    heads: int = Field(
        1, ge=1, description="K > 1: an ensemble of K linear heads on the shared decoder, each from its own random "
        "init, trained with the mean of their Bradley–Terry losses; the learned reward source reads their mean and "
        "std (disagreement). 1 = one score head",
    )
    kind: str = Field("scalar", description="scalar = head on prompt + answer; critique = the model writes a "
                                            "critique first, the head reads it too (MM-RLHF)")
    facts: bool = Field(False, description="put each row's facts (meta.facts, or the Shapes scene's objects) "
                                           "before its prompt, so the RM judges agreement with them (Fact-RLHF)")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, v: str) -> str:
        return RM_KINDS.known(v)


class CritiqueSettings(BaseConfig):
    """How a critique reward model (``model.kind: critique``) trains; rows need ``critique`` labels."""

    lm_weight: float = Field(1.0, ge=0, description="weight of the critique NLL beside the score term "
                                                    "(Bradley–Terry, or regression where rows carry scores)")
    eval_generated: int = Field(0, ge=0, description="held-out pairs also scored with the model's own greedy "
                                                     "critiques, as the critique_rm source scores (slow); 0 = off")
    max_new_tokens: int = Field(48, ge=1, description="longest critique generated for eval_generated")
