"""`vlalign rm model.kind=critique`: the critique reward model of MM-RLHF (Zhang et al. 2025).

The model reads (prompt + image, answer) and writes a critique; its scalar head then reads the last token of
(prompt + image, answer, critique) and gives the score. Training rows are preference pairs whose
``critique`` holds a reference critique of each answer (the MM-RLHF adapter's annotator reasons, or
``vlalign data critiques`` on Shapes). Each pair becomes two rows, one per answer, whose prompt asks to
critique that answer and whose target is its critique (:func:`vlalign.rewards.rm_inputs.critique_record`);
one forward per row gives both the critique tokens' log-probs and the hidden state the head reads:

    loss = lm_weight · mean critique NLL  +  Bradley–Terry on (s_chosen, s_rejected)   (per pair)

(regression on the row's scores instead of Bradley–Terry where ``critique.chosen_score`` /
``rejected_score`` are given; :func:`vlalign.objectives.critique.critique_rm_loss`).

WHY teacher forcing for the head: the head learns to read a correct critique; at scoring time the model's
own greedy critique takes its place (:mod:`vlalign.rewards.critique`), which is the MM-RLHF recipe. The
held-out report is teacher-forced too (pair accuracy on the reference critiques, critique NLL per token),
so it measures both parts of the loss without generating.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from vlalign.data.collate import CollateConfig, EncodedDataset, collate
from vlalign.models.critique_head import CritiqueHeadModel
from vlalign.objectives.critique import critique_rm_loss, sequence_nll
from vlalign.rewards.rm_inputs import critique_record, record_where
from vlalign.rewards.rm_metrics import pairwise_report
from vlalign.trainers.reward_model import RewardModelConfig, Training, _run_scalar, eval_records, model_view
from vlalign.trainers.run import collate_config
from vlalign.trainers.step import StepResult

SIDES = ("chosen", "rejected")


def check_critiques(records: Sequence[Any], source: str) -> None:
    """Every row is a preference pair with a critique of both answers; one error lists the first bad rows."""
    bad = [record_where(r, i) for i, r in enumerate(records) if getattr(r, "critique", None) is None]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(
            f"{source}: {len(bad)} of {len(records)} rows have no `critique` ({', '.join(bad[:5])}{more}); a critique "
            "reward model (model.kind=critique) trains on pairs with critique.chosen and critique.rejected; fix: "
            "`vlalign data critiques FILE --out OUT` for Shapes pairs, MM-RLHF rows with both reasons, or model.kind=scalar"
        )


class CritiqueRows(Sequence):
    """Pair ``i`` → rows ``2i`` (critique the chosen answer) and ``2i + 1`` (the rejected one), built on access."""

    def __init__(self, pairs: Sequence[Any]) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return 2 * len(self.pairs)

    def __getitem__(self, j: int) -> Any:  # type: ignore[override]
        rec = self.pairs[j // 2]
        side = SIDES[j % 2]
        return critique_record(rec, getattr(rec, side), getattr(rec.critique, side), side)


class CritiquePairDataset:
    """Pairs → response-major batches: rows ``0..B-1`` critique the chosen answers, ``B..2B-1`` the rejected
    ones (each with its own prompt, since the answer is part of it); ``batch.rows`` are the pair indices."""

    def __init__(self, pairs: Sequence[Any], processor: Any, cfg: CollateConfig) -> None:
        self.pairs = pairs
        self.processor = processor
        self.rows = EncodedDataset(CritiqueRows(pairs), processor, cfg, "sft")

    def __len__(self) -> int:
        return len(self.pairs)

    def batch(self, indices: Sequence[int]) -> Any:
        encoded = [self.rows.encode(2 * i + s) for s in (0, 1) for i in indices]
        batch = collate(encoded, self.processor)
        batch.rows, batch.ids = list(indices), [self.pairs[i].id for i in indices]
        return batch

    def check_all(self, num_workers: int = 0) -> None:
        self.rows.check_all(num_workers)


def score_targets(records: Sequence[Any], rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """(targets (B, 2) as (y_chosen, y_rejected), has_target (B,) bool) from the rows' critique scores."""
    ys, has = [], []
    for r in rows:
        c = records[r].critique
        given = c.chosen_score is not None and c.rejected_score is not None
        ys.append([c.chosen_score, c.rejected_score] if given else [0.0, 0.0])
        has.append(given)
    return torch.tensor(ys, dtype=torch.float32), torch.tensor(has)


def pair_outputs(model: Any, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(scores (B, 2), critique NLL per token (B, 2)) of a pair batch; columns are (chosen, rejected)."""
    scores, logps, mask = model(batch.inputs, batch.response_mask, with_logprobs=True)  # (2B,), (2B, T) x2
    nll = sequence_nll(logps, mask)  # (2B,)
    return scores.view(2, -1).T, nll.view(2, -1).T  # (B, 2), (B, 2)


def critique_micro_step(model: Any, batch: Any, records: Sequence[Any], cfg: RewardModelConfig) -> StepResult:
    scores, nll = pair_outputs(model, batch)  # (B, 2), (B, 2)
    targets, has = (t.to(scores.device) for t in score_targets(records, batch.rows))
    out = critique_rm_loss(nll[:, 0], nll[:, 1], scores[:, 0], scores[:, 1], cfg.critique.lm_weight, targets, has)
    diff = (scores[:, 0] - scores[:, 1]).detach()
    return StepResult(out.losses.sum(), {"accuracy": (diff > 0).float().sum(), "margin": diff.sum(),
                                         "critique_nll": out.lm.detach().sum(), "score_loss": out.score.detach().sum()},
                      int(batch.inputs["attention_mask"].sum()))  # fmt: skip


@torch.no_grad()
def evaluate_critique_model(model: Any, processor: Any, cfg: RewardModelConfig, kind: str,
                            spec: Any = None) -> dict[str, Any] | None:
    """Held-out pairs, teacher-forced: the pairwise report of the head's scores + ``critique_nll`` (one score
    head: ``spec`` is always the single one)."""
    if cfg.eval.data is None:
        return None
    records = eval_records(cfg)
    check_critiques(records, "eval.data")
    dataset = CritiquePairDataset(records, processor, collate_config(cfg))
    was_training = model.training
    model.eval()
    scores, nlls = [], []
    for start in range(0, len(dataset), cfg.eval.batch_size):
        batch = dataset.batch(list(range(start, min(len(dataset), start + cfg.eval.batch_size))))
        s, n = pair_outputs(model, batch)
        scores.append(s.float())
        nlls.append(n.float())
    model.train(was_training)
    s, n = torch.cat(scores), torch.cat(nlls)  # (N, 2), (N, 2)
    report = pairwise_report(s[:, 0], s[:, 1], cfg.eval.calibration_bins)
    report["critique_nll"] = float(n.mean())
    if cfg.critique.eval_generated:
        report["generated"] = generated_report(model, processor, cfg, records[: cfg.critique.eval_generated])
    return report


def generated_report(model: Any, processor: Any, cfg: RewardModelConfig, records: Sequence[Any]) -> dict[str, Any]:
    """Held-out pairs scored as the ``critique_rm`` source scores: the model's own greedy critique, then the
    head. ``accuracy`` counts pairs whose chosen answer scores higher; ``critique_exact`` the critiques equal
    to the reference (after stripping)."""
    from pathlib import Path

    from vlalign.rewards.base import Sample
    from vlalign.rewards.critique import CritiqueReward
    from vlalign.rewards.learned import LoadedScalarModel

    # the held-out records already carry their facts in the prompt (model_view): the source adds none
    loaded = LoadedScalarModel(model, processor, "critique", Path(cfg.output_dir), cfg.data.max_length, facts=False)
    source = CritiqueReward("", batch_size=cfg.eval.batch_size, max_new_tokens=cfg.critique.max_new_tokens,
                            loaded=loaded)
    was_training = model.training
    model.eval()
    try:
        out = {side: source.score([Sample(list(r.images), r.prompt, getattr(r, side), dict(r.meta)) for r in records])
               for side in SIDES}
    finally:
        model.train(was_training)
    exact = [got.strip() == getattr(r.critique, side).strip()
             for side in SIDES for got, r in zip(out[side].notes or [], records, strict=True)]
    wins = out["chosen"].rewards > out["rejected"].rewards  # (N,)
    return {"n_pairs": len(records), "accuracy": float(wins.float().mean()),
            "critique_exact": sum(exact) / max(1, len(exact)),
            "examples": [{"answer": r.rejected, "critique": c, "reference": r.critique.rejected}
                         for r, c in list(zip(records, out["rejected"].notes or [], strict=True))[:3]]}


def train_critique_reward_model(cfg: RewardModelConfig, records: list[Any] | None = None,
                                stop_after: int | None = None) -> dict[str, Any]:
    """Critique NLL + Bradley–Terry (or score regression) on pairs with critiques; returns the metrics."""

    def make(run: Any) -> Training:
        check_critiques(run.records, "data.train")
        ds = CritiquePairDataset(model_view(cfg, run.records), run.processor, collate_config(cfg))
        ds.check_all(cfg.data.num_workers)
        return Training(ds, lambda b: critique_micro_step(run.model, b, run.records, cfg), "pairs")

    return _run_scalar(cfg, "critique", records, make, stop_after, wrap_model=CritiqueHeadModel,
                       evaluate=evaluate_critique_model)
