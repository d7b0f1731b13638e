"""PREFERENCE_LOSSES: every preference objective behind one calling convention.

A DPO-style trainer computes what the batch needs once (policy and, where needed, reference
log-probs), packs it into a :class:`PreferenceBatchLogps`, and calls the objective picked by
name from the config::

    objective = PREFERENCE_LOSSES.get(cfg.loss)          # e.g. "ipo"
    if objective.requires_reference: ...                  # skip the reference pass for simpo/orpo
    out = objective(batch, **cfg.loss_kwargs)             # PreferenceLossOutput, .losses (B,)

Each entry knows which batch fields it needs (``required_fields``) and which hyper-parameters it
accepts (``defaults``); a missing field or an unknown hyper-parameter fails loudly instead of being
ignored, so no config flag silently does nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from vlalign.objectives import preference as P
from vlalign.objectives.preference import PreferenceLossOutput
from vlalign.registry import Registry


@dataclass
class PreferenceBatchLogps:
    """Per-sequence quantities of a batch of B preference pairs, all (B,) unless noted.

    ``*_logps`` are SUMS over response tokens. Average log-probs are taken from the ``*_avg_logps``
    fields when given, else computed as sum / token count. ``chosen_nll`` defaults to −average
    chosen log-prob (the SFT term of ORPO).
    """

    policy_chosen_logps: torch.Tensor
    policy_rejected_logps: torch.Tensor
    ref_chosen_logps: torch.Tensor | None = None
    ref_rejected_logps: torch.Tensor | None = None
    policy_chosen_avg_logps: torch.Tensor | None = None
    policy_rejected_avg_logps: torch.Tensor | None = None
    ref_chosen_avg_logps: torch.Tensor | None = None
    ref_rejected_avg_logps: torch.Tensor | None = None
    chosen_token_count: torch.Tensor | None = None  # (B,) number of response tokens
    rejected_token_count: torch.Tensor | None = None
    chosen_nll: torch.Tensor | None = None
    # mDPO: the chosen response scored under a corrupted image
    policy_chosen_corrupted_logps: torch.Tensor | None = None
    ref_chosen_corrupted_logps: torch.Tensor | None = None
    # KTO reference point z0 (scalar), see preference.kto_kl_reference
    kl_ref: torch.Tensor | float | None = None
    # dense DPO (RLHF-V): per-token log-probs (B, T) with explicit masks
    policy_chosen_token_logps: torch.Tensor | None = None
    policy_rejected_token_logps: torch.Tensor | None = None
    ref_chosen_token_logps: torch.Tensor | None = None
    ref_rejected_token_logps: torch.Tensor | None = None
    chosen_mask: torch.Tensor | None = None
    rejected_mask: torch.Tensor | None = None
    chosen_segment_mask: torch.Tensor | None = None
    rejected_segment_mask: torch.Tensor | None = None
    # MM-DPO: the pair's reward-model margin δ = r(chosen) − r(rejected) (the records' ``margin``)
    reward_margin: torch.Tensor | None = None

    def require(self, loss: str, *names: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(
                f"preference loss {loss!r} needs batch fields {missing}, which are None. "
                f"Fill them in PreferenceBatchLogps (see PREFERENCE_LOSSES.get({loss!r}).required_fields)."
            )

    def avg(self, side: str) -> torch.Tensor:
        """Average per-token log-prob of ``side`` in {policy_chosen, policy_rejected, ref_chosen,
        ref_rejected}: the given ``*_avg_logps`` or sum / token count."""
        given = getattr(self, f"{side}_avg_logps")
        if given is not None:
            return given
        count = getattr(self, f"{side.split('_')[1]}_token_count")
        total = getattr(self, f"{side}_logps")
        if count is None or total is None:
            raise ValueError(
                f"average log-probs for {side!r} need either {side}_avg_logps or both {side}_logps "
                f"and {side.split('_')[1]}_token_count in PreferenceBatchLogps"
            )
        return total / count.to(total.dtype).clamp(min=1.0)


LossAdapter = Callable[..., PreferenceLossOutput]


@dataclass(frozen=True)
class PreferenceObjective:
    """A registered preference loss: ``objective(batch, **hparams) -> PreferenceLossOutput``."""

    name: str
    fn: LossAdapter  # (batch, **hparams) -> PreferenceLossOutput
    requires_reference: bool
    required_fields: tuple[str, ...]
    defaults: dict[str, Any] = field(default_factory=dict)
    doc: str = ""

    def __call__(self, batch: PreferenceBatchLogps, **hparams: Any) -> PreferenceLossOutput:
        unknown = sorted(set(hparams) - set(self.defaults))
        if unknown:
            raise ValueError(
                f"preference loss {self.name!r} got unknown hyper-parameters {unknown}; "
                f"it accepts {sorted(self.defaults)}. Remove them from the config."
            )
        if not isinstance(batch, PreferenceBatchLogps):
            raise TypeError(f"preference loss {self.name!r} expects a PreferenceBatchLogps, "
                             f"got {type(batch).__name__}")
        batch.require(self.name, *self.required_fields)
        return self.fn(batch, **{**self.defaults, **hparams})


PREFERENCE_LOSSES: Registry[PreferenceObjective] = Registry("preference loss")

_PAIR = ("policy_chosen_logps", "policy_rejected_logps")
_REF = ("ref_chosen_logps", "ref_rejected_logps")


def _register(name: str, fn: LossAdapter, *, requires_reference: bool, fields: tuple[str, ...],
              doc: str, **defaults: Any) -> None:
    PREFERENCE_LOSSES.register(name)(PreferenceObjective(name, fn, requires_reference, fields,
                                                         defaults, doc))


def _four(b: PreferenceBatchLogps) -> tuple[torch.Tensor, ...]:
    return b.policy_chosen_logps, b.policy_rejected_logps, b.ref_chosen_logps, b.ref_rejected_logps


def _kto_paired(b: PreferenceBatchLogps, beta: float, desirable_weight: float,
                undesirable_weight: float) -> PreferenceLossOutput:
    """KTO on paired data: chosen = desirable, rejected = undesirable; per-pair loss is the mean
    of the two so that ``.losses.mean()`` equals the paper's mean over the 2B examples."""
    B = b.policy_chosen_logps.shape[0]
    policy = torch.cat([b.policy_chosen_logps, b.policy_rejected_logps])  # (2B,)
    ref = torch.cat([b.ref_chosen_logps, b.ref_rejected_logps])  # (2B,)
    labels = torch.cat([torch.ones(B, dtype=torch.bool), torch.zeros(B, dtype=torch.bool)]).to(policy.device)
    out = P.kto_loss(policy, ref, labels, b.kl_ref, beta=beta, desirable_weight=desirable_weight,
                     undesirable_weight=undesirable_weight)
    losses = 0.5 * (out.losses[:B] + out.losses[B:])
    return PreferenceLossOutput(losses, out.rewards[:B], out.rewards[B:], {"kl_ref": out.extras["kl_ref"][:B]})


def _ipo(b: PreferenceBatchLogps, beta: float, average_logps: bool) -> PreferenceLossOutput:
    if not average_logps:
        return P.ipo_loss(*_four(b), beta=beta)
    sides = ("policy_chosen", "policy_rejected", "ref_chosen", "ref_rejected")
    return P.ipo_loss(*(b.avg(s) for s in sides), beta=beta)


def _orpo(b: PreferenceBatchLogps, beta: float) -> PreferenceLossOutput:
    chosen = b.avg("policy_chosen")
    nll = b.chosen_nll if b.chosen_nll is not None else -chosen
    return P.orpo_loss(chosen, b.avg("policy_rejected"), nll, beta=beta)


def _dense(b: PreferenceBatchLogps, beta: float, gamma: float, normalize: bool) -> PreferenceLossOutput:
    return P.dense_dpo_loss(
        b.policy_chosen_token_logps, b.policy_rejected_token_logps, b.ref_chosen_token_logps,
        b.ref_rejected_token_logps, b.chosen_mask, b.rejected_mask, b.chosen_segment_mask,
        b.rejected_segment_mask, beta=beta, gamma=gamma, normalize=normalize,
    )


_register("dpo", lambda b, beta, label_smoothing: P.dpo_loss(*_four(b), beta=beta,
                                                             label_smoothing=label_smoothing),
          requires_reference=True, fields=_PAIR + _REF, doc=P.dpo_loss.__doc__ or "",
          beta=0.1, label_smoothing=0.0)
_register("cdpo", lambda b, beta, label_smoothing: P.dpo_loss(*_four(b), beta=beta,
                                                              label_smoothing=label_smoothing),
          requires_reference=True, fields=_PAIR + _REF, doc=P.dpo_loss.__doc__ or "",
          beta=0.1, label_smoothing=0.1)
_register("ipo", _ipo, requires_reference=True, fields=_PAIR + _REF, doc=P.ipo_loss.__doc__ or "",
          beta=0.1, average_logps=False)
_register("hinge", lambda b, beta: P.hinge_loss(*_four(b), beta=beta), requires_reference=True,
          fields=_PAIR + _REF, doc=P.hinge_loss.__doc__ or "", beta=0.1)
_register("simpo", lambda b, beta, gamma: P.simpo_loss(b.avg("policy_chosen"), b.avg("policy_rejected"),
                                                       beta=beta, gamma=gamma),
          requires_reference=False, fields=_PAIR, doc=P.simpo_loss.__doc__ or "", beta=2.0, gamma=0.5)
_register("orpo", _orpo, requires_reference=False, fields=_PAIR, doc=P.orpo_loss.__doc__ or "", beta=0.1)
_register("kto", _kto_paired, requires_reference=True, fields=_PAIR + _REF + ("kl_ref",),
          doc=P.kto_loss.__doc__ or "", beta=0.1, desirable_weight=1.0, undesirable_weight=1.0)
_register("mdpo", lambda b, beta, anchor_delta, conditional_weight, anchor_weight: P.mdpo_loss(
    *_four(b), b.policy_chosen_corrupted_logps, b.ref_chosen_corrupted_logps, beta=beta,
    anchor_delta=anchor_delta, conditional_weight=conditional_weight, anchor_weight=anchor_weight),
    requires_reference=True,
    fields=_PAIR + _REF + ("policy_chosen_corrupted_logps", "ref_chosen_corrupted_logps"),
    doc=P.mdpo_loss.__doc__ or "", beta=0.1, anchor_delta=0.0, conditional_weight=1.0, anchor_weight=1.0)
_register("dense_dpo", _dense, requires_reference=True,
          fields=("policy_chosen_token_logps", "policy_rejected_token_logps", "ref_chosen_token_logps",
                  "ref_rejected_token_logps", "chosen_mask", "rejected_mask"),
          doc=P.dense_dpo_loss.__doc__ or "", beta=0.1, gamma=5.0, normalize=True)
_register("mm_dpo", lambda b, beta, w, k: P.mm_dpo_loss(*_four(b), b.reward_margin, beta=beta, w=w, k=k),
          requires_reference=True, fields=_PAIR + _REF + ("reward_margin",), doc=P.mm_dpo_loss.__doc__ or "",
          beta=0.1, w=0.1, k=1.0)


def preference_batch_fields() -> list[str]:
    """Names of every PreferenceBatchLogps field (for trainers that fill the batch generically)."""
    return [f.name for f in dataclasses.fields(PreferenceBatchLogps)]
