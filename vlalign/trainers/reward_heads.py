"""Micro-steps on preference pairs and held-out reports of each kind of reward-model head.

- **single**: one score, Bradley–Terry per pair;
- **ensemble** (``model.heads: K``): K linear heads on the shared decoder, each from its own random
  init, trained together with :func:`ensemble_bt_loss` (the mean of the K Bradley–Terry losses).
  ``bootstrap: true`` weights each (pair, head) by a Poisson(1) count (online bagging), so each head
  trains on its own resample of the pairs.
- **aspects** (``aspects: [...]``): one head per rated aspect, trained with :func:`aspect_bt_loss`
  on the order the records' ``ratings`` give each aspect; ties and unrated aspects train nothing.

Scores arrive response-major, (k·B, outputs): block j holds the j-th response of every row.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vlalign.objectives import (
    aspect_bt_loss,
    aspect_labels,
    bootstrap_weights,
    bradley_terry_loss,
    ensemble_bt_loss,
)
from vlalign.registry import Registry
from vlalign.rewards.multi_head import HeadSpec
from vlalign.rewards.rm_metrics import pair_accuracy
from vlalign.trainers.step import StepResult


def split_responses(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(k·B, ...) response-major scores → (B, k, ...) (a view: no arithmetic, so no rounding)."""
    return scores.view(k, -1, *scores.shape[1:]).transpose(0, 1)


def pair_margins(records: list[Any], rows: list[int], use: bool, like: torch.Tensor) -> torch.Tensor | None:
    """(B,) the records' ``margin`` (0 where unset) when ``use``, else None."""
    if not use:
        return None
    return torch.tensor([records[r].margin or 0.0 for r in rows], dtype=like.dtype, device=like.device)


def bt_micro_step(model: Any, batch: Any, records: list[Any], cfg: Any) -> StepResult:
    """Bradley–Terry summed over the pairs of a micro-batch (one score head)."""
    scores = split_responses(model(batch.inputs, batch.response_mask), 2)  # (B, 2)
    chosen, rejected = scores[:, 0], scores[:, 1]  # (B,), (B,)
    margin = pair_margins(records, batch.rows, cfg.use_margins, chosen)
    losses = bradley_terry_loss(chosen, rejected, margin, cfg.center_coef)  # (B,)
    diff = (chosen - rejected).detach()
    return StepResult(losses.sum(), {"accuracy": (diff > 0).float().sum(), "margin": diff.sum()},
                      int(batch.inputs["attention_mask"].sum()))  # fmt: skip


# ------------------------------------------------------------------------------------ ensemble


def ensemble_micro_step(model: Any, batch: Any, records: list[Any], cfg: Any) -> StepResult:
    """Bradley–Terry summed over pairs, averaged over the K heads (bootstrap-weighted when asked)."""
    scores = split_responses(model(batch.inputs, batch.response_mask), 2)  # (B, 2, K)
    chosen, rejected = scores[:, 0], scores[:, 1]  # (B, K), (B, K)
    k = chosen.shape[1]
    weights = bootstrap_weights(batch.rows, k, cfg.seed).to(chosen.device) if cfg.bootstrap else None  # (B, K)
    margin = pair_margins(records, batch.rows, cfg.use_margins, chosen)
    losses = ensemble_bt_loss(chosen, rejected, weights, margin, cfg.center_coef)  # (B,)
    diff = (chosen - rejected).detach()  # (B, K)
    mean_diff = diff.mean(dim=1)  # (B,) the ensemble's margin
    spread = torch.cat([chosen, rejected]).detach().std(dim=1, unbiased=False)  # (2B,) disagreement per answer
    return StepResult(losses.sum(), {"accuracy": (mean_diff > 0).float().sum(), "margin": mean_diff.sum(),
                                     "disagreement": spread.view(2, -1).mean(dim=0).sum()},
                      int(batch.inputs["attention_mask"].sum()))  # fmt: skip


# ------------------------------------------------------------------------------------- aspects


def aspect_ratings(records: list[Any], rows: list[int], aspects: tuple[str, ...] | list[str],
                   strict: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen (B, A), rejected (B, A)) ratings per aspect, NaN where a side is unrated.

    ``strict``: a row that rates none of ``aspects`` on both answers trains nothing and most likely
    means the wrong data or the wrong aspect names; it fails naming the row, its id and the field."""
    chosen = torch.full((len(rows), len(aspects)), math.nan)
    rejected = torch.full((len(rows), len(aspects)), math.nan)
    for b, r in enumerate(rows):
        rec = records[r]
        ratings = getattr(rec, "ratings", None) or {}
        c, j = ratings.get("chosen") or {}, ratings.get("rejected") or {}
        if strict and not any(a in c and a in j for a in aspects):
            raise ValueError(
                f"row {r} (id {rec.id!r}): field `ratings` rates none of the aspects {list(aspects)} on both answers "
                f"(chosen rates {sorted(c)}, rejected rates {sorted(j)}); fix: give ratings "
                "{chosen: {aspect: score}, rejected: {aspect: score}} (the vlfeedback and beavertails_v formats and "
                "`vlalign annotate export` write them), name the aspects the data has in `aspects:`, or drop `aspects:`")
        for i, a in enumerate(aspects):
            chosen[b, i] = float(c.get(a, math.nan))
            rejected[b, i] = float(j.get(a, math.nan))
    return chosen, rejected


def aspect_label_rows(records: list[Any], rows: list[int], aspects: tuple[str, ...]) -> torch.Tensor:
    """(B, A) +1 / −1 / 0 per (pair, aspect): which answer the aspect's ratings prefer (0: tie, unrated)."""
    return aspect_labels(*aspect_ratings(records, rows, aspects))


def aspect_micro_step(model: Any, batch: Any, records: list[Any], spec: HeadSpec) -> StepResult:
    """Bradley–Terry per labelled (pair, aspect) cell, summed; the unit is the labelled cell."""
    scores = split_responses(model(batch.inputs, batch.response_mask), 2)  # (B, 2, A)
    chosen, rejected = scores[:, 0], scores[:, 1]  # (B, A), (B, A)
    labels = aspect_label_rows(records, batch.rows, spec.aspects).to(chosen.device)  # (B, A)
    cells = aspect_bt_loss(chosen, rejected, labels)  # (B, A), 0 where unlabelled
    right = ((chosen - rejected).detach() * labels > 0).float()  # (B, A)
    return StepResult(cells.sum(), {"accuracy": right.sum()}, int(batch.inputs["attention_mask"].sum()))


def aspect_cells(records: list[Any], spec: HeadSpec) -> Any:
    """``counts(batch)`` of the aspect trainer: the labelled (pair, aspect) cells of a micro-batch."""
    return lambda batch: {"aspect_pairs": float((aspect_label_rows(records, batch.rows, spec.aspects) != 0).sum())}


# --------------------------------------------------------------------------- kind -> training

#: head kind -> fn(run, cfg, spec) -> (micro_step(batch), unit, counts(batch) or None = one per row): how a
#: reward model with that head trains on preference pairs
PAIR_TRAINING: Registry = Registry("reward-model head kind")
PAIR_TRAINING.register("single")(lambda run, cfg, spec: (
    lambda b: bt_micro_step(run.model, b, run.records, cfg), "pairs", None))
PAIR_TRAINING.register("ensemble")(lambda run, cfg, spec: (
    lambda b: ensemble_micro_step(run.model, b, run.records, cfg), "pairs", None))


@PAIR_TRAINING.register("aspects")
def _aspect_training(run: Any, cfg: Any, spec: HeadSpec) -> tuple[Any, str, Any]:
    aspect_ratings(run.records, list(range(len(run.records))), spec.aspects)  # every row rated, before any step
    return lambda b: aspect_micro_step(run.model, b, run.records, spec), "aspect_pairs", aspect_cells(run.records, spec)


# ----------------------------------------------------------------------------- held-out reports

#: kind -> fn(spec, chosen (N, outputs), rejected (N, outputs), records) -> extra entries of the held-out
#: report (the overall score's pairwise report is computed for every kind).
HEAD_REPORTS: Registry = Registry("reward-model head report")
HEAD_REPORTS.register("single")(lambda spec, chosen, rejected, records: {})


@HEAD_REPORTS.register("ensemble")
def ensemble_report(spec: HeadSpec, chosen: torch.Tensor, rejected: torch.Tensor, records: list[Any]) -> dict:
    """Each head's accuracy, the mean disagreement (std over heads) of a score, and the disagreement
    about the margin on the pairs the ensemble ranks right vs wrong: an ensemble that knows its
    uncertainty disagrees more where it is wrong."""
    margins = chosen - rejected  # (N, K)
    spread = margins.std(dim=1, unbiased=False)  # (N,)
    wrong = margins.mean(dim=1) <= 0  # (N,)
    scores_std = torch.cat([chosen, rejected]).std(dim=1, unbiased=False)  # (2N,)
    return {
        "head_accuracy": [pair_accuracy(chosen[:, k], rejected[:, k]) for k in range(chosen.shape[1])],
        "disagreement": float(scores_std.mean()) if scores_std.numel() else 0.0,
        "margin_std_right": float(spread[~wrong].mean()) if (~wrong).any() else float("nan"),
        "margin_std_wrong": float(spread[wrong].mean()) if wrong.any() else float("nan"),
    }


@HEAD_REPORTS.register("aspects")
def aspects_report(spec: HeadSpec, chosen: torch.Tensor, rejected: torch.Tensor, records: list[Any]) -> dict:
    """Per aspect: accuracy on the held-out pairs whose ratings order that aspect, and how many do."""
    labels = aspect_labels(*aspect_ratings(records, list(range(len(records))), spec.aspects, strict=False))  # (N, A)
    right = ((chosen - rejected) * labels > 0).float()  # (N, A)
    out = {}
    for i, name in enumerate(spec.aspects):
        n = int((labels[:, i] != 0).sum())
        out[name] = {"accuracy": float(right[:, i].sum()) / n if n else float("nan"), "n_labelled": n}
    return {"aspects": out}
