"""`vlalign rm` / `vlalign cost-model` / `vlalign rm distill`: scalar models on a VLM backbone.

A reward (or cost) model is any image-text-to-text model (the shared loader, LoRA optional) plus one
``Linear(hidden, 1)`` read at the LAST response token (:class:`vlalign.models.heads.ScalarHeadModel`).
Chosen and rejected answers of a pair go through ONE forward (the collator's response-major layout).

- reward model: Bradley–Terry on pairs (optional per-pair ``margin``), Plackett–Luce on ranked lists;
  ``model.heads: K`` trains an ensemble of K heads, ``aspects:`` one head per rated aspect
  (:mod:`vlalign.trainers.reward_heads`);
- cost model (Safe RLHF): pairwise "the more harmful costs more" + the sign term that anchors
  cost > 0 ⇔ unsafe, on safety-labelled pairs (``safety.safer`` may name either side);
- distillation: a smaller student regresses a trained teacher's scores (precomputed once).

``model.kind`` picks the reward model from :data:`RM_KINDS`: ``scalar`` (the head reads prompt + answer) or
``critique`` (MM-RLHF: the model writes a critique first and the head reads it too;
:mod:`vlalign.trainers.critique_rm`). ``model.facts: true`` (Fact-RLHF) puts each row's ground-truth facts
in front of its prompt (:mod:`vlalign.rewards.rm_inputs`), in training, held-out evaluation and scoring.

Every run evaluates on held-out pairs before and after training (accuracy, margin histogram, ECE of
σ(r_c − r_r); for cost models also how often sign(cost) matches the safety label) into
``metrics.json``, and saves ``final/`` so that :func:`vlalign.rewards.learned.load_reward_model`
loads it back with one call.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from pydantic import Field, model_validator

from vlalign.config import BaseConfig
from vlalign.data.collate import CollateConfig, EncodedDataset, collate, encode_response, fit_response
from vlalign.data.validate import load_records
from vlalign.models.heads import ScalarHeadModel, hidden_size_of
from vlalign.objectives import plackett_luce_loss, safe_rlhf_cost_loss
from vlalign.rewards.multi_head import HeadSpec
from vlalign.rewards.rm_inputs import with_facts
from vlalign.rewards.rm_metrics import pairwise_report, safety_report
from vlalign.trainers.configs import TrainConfig
from vlalign.trainers.reward_heads import HEAD_REPORTS, PAIR_TRAINING, split_responses
from vlalign.trainers.rm_settings import RM_KINDS, CritiqueSettings, RewardModelSettings
from vlalign.trainers.run import attach_dataset, collate_config, side_data, start_run
from vlalign.trainers.step import StepResult, mean_over

META_FILE = "reward_model.json"


class EvalSettings(BaseConfig):
    """Held-out evaluation of a scalar model (run before and after training)."""

    data: str | None = Field(None, description="held-out preference file/folder; None = no evaluation")
    limit: int | None = Field(None, ge=1, description="first N held-out pairs only")
    batch_size: int = Field(8, ge=1)
    calibration_bins: int = Field(10, ge=2)
    before_training: bool = Field(True, description="also evaluate the untrained model (the baseline)")


class ScalarModelConfig(TrainConfig):
    data_features: ClassVar[frozenset[str]] = frozenset({"workers"})
    eval: EvalSettings = Field(default_factory=EvalSettings)


class RewardModelConfig(ScalarModelConfig):
    """Bradley–Terry on preference pairs; Plackett–Luce when the data holds ranked lists."""

    model: RewardModelSettings
    critique: CritiqueSettings = Field(default_factory=CritiqueSettings)
    use_margins: bool = Field(False, description="require r_c − r_r ≥ the record's `margin` (Llama-2 style)")
    center_coef: float = Field(0.0, ge=0, description="× (r_c + r_r)²: keeps rewards centred on 0")
    bootstrap: bool = Field(
        False, description="ensembles: weight each (pair, head) by a Poisson(1) count drawn from (seed, row, head), "
        "so each head trains on its own resample of the pairs (online bagging; ~37% of the pairs get weight 0 per "
        "head). Off: the heads differ only by their init",
    )
    aspects: list[str] = Field(
        default_factory=list, description="one head per named aspect, trained on the order the records' "
        "`ratings` give that aspect (ties and unrated aspects train nothing); rows must rate at least one of them "
        "on both answers. Empty = one overall score",
    )
    aspect_weights: dict[str, float] | None = Field(
        None, description="overall score = Σ weight × aspect score (what the learned reward source returns by "
        "default and what held-out accuracy is measured on); one weight per aspect; None = 1/len(aspects) each",
    )

    @model_validator(mode="after")
    def _heads_consistent(self) -> RewardModelConfig:
        if self.bootstrap and self.model.heads == 1:
            raise ValueError("bootstrap=true resamples the pairs per ensemble head; it needs model.heads > 1")
        if self.aspect_weights is not None:
            if not self.aspects:
                raise ValueError("aspect_weights is set but aspects is empty; list the aspects (aspects: [...])")
            if set(self.aspect_weights) != set(self.aspects):
                raise ValueError(f"aspect_weights must give one weight per aspect {self.aspects}; got "
                                 f"{sorted(self.aspect_weights)}")
        spec = head_spec(self)  # heads + aspects together, repeated aspects: the spec's own messages
        if self.model.kind == "critique" and spec.kind != "single":
            raise ValueError(f"model.kind=critique trains one score head; this config asks for a {spec.kind} head. "
                             "Fix: set model.heads=1 and aspects=[], or model.kind=scalar")
        return self


def head_spec(cfg: Any) -> HeadSpec:
    """The head a reward-model config trains (a plain score head for the cost model and distillation)."""
    aspects = tuple(getattr(cfg, "aspects", ()))
    given = getattr(cfg, "aspect_weights", None)
    weights = tuple(given[a] for a in aspects) if given else tuple(1.0 / len(aspects) for _ in aspects)
    return HeadSpec(getattr(cfg.model, "heads", 1), aspects, weights)


class CostModelConfig(ScalarModelConfig):
    """Safe RLHF cost model on safety-labelled pairs (records need `safety`)."""

    sign_weight: float = Field(1.0, ge=0, description="weight of the sign term that anchors cost > 0 ⇔ unsafe")


class DistillConfig(ScalarModelConfig):
    """Regress a trained teacher's scores with a (smaller) student backbone + head."""

    teacher: str = Field(..., description="folder of a trained reward/cost model (its output_dir or final/)")
    teacher_batch_size: int = Field(8, ge=1)


# ------------------------------------------------------------------------------------------- data


class RankedDataset(EncodedDataset):
    """Ranked records → response-major batches of K blocks (best first). Rows with fewer responses
    than the batch's longest are padded by repeating their last response, masked out of the loss."""

    def __init__(self, records: list[Any], processor: Any, cfg: CollateConfig) -> None:
        super().__init__(records, processor, cfg, "sft")

    def encode(self, index: int) -> Any:
        rec = self.records[index]
        if len(rec.responses) < 2:
            raise ValueError(f"row {index} (id {rec.id!r}): a ranking needs at least 2 responses")
        enc = super().encode(index)  # prompt + the first response (via the `reference` field below)
        for text in rec.responses[1:]:
            ids, _ = encode_response(self.processor, text)
            enc.responses.append(fit_response(len(enc.prompt_ids), ids, self.cfg.max_length, index, rec.id))
            enc.token_flags.append([False] * len(enc.responses[-1]))
        return enc

    def batch(self, indices: Any) -> Any:
        encoded = [self.encode(i) for i in indices]
        k = max(len(e.responses) for e in encoded)
        for e in encoded:
            while len(e.responses) < k:
                e.responses.append(list(e.responses[-1]))
                e.token_flags.append(list(e.token_flags[-1]))
        return collate(encoded, self.processor)


def rank_mask(records: list[Any], rows: list[int], k: int) -> torch.Tensor:
    """(B, K) True where row b has a real (not padding) k-th response."""
    sizes = torch.tensor([len(records[r].responses) for r in rows])  # (B,)
    return torch.arange(k)[None, :] < sizes[:, None]


class _RankedAsPrompt:
    """Adapter so the SFT encoder reads a ranked record's best response as its `reference`."""

    def __init__(self, rec: Any) -> None:
        self.id, self.images, self.prompt, self.reference = rec.id, rec.images, rec.prompt, rec.responses[0]
        self.responses = rec.responses
        self.meta = getattr(rec, "meta", {})


def _kind_of(records: list[Any]) -> str:
    kinds = {type(r).__name__ for r in records}
    if kinds == {"PreferenceRecord"}:
        return "pair"
    if kinds == {"RankedRecord"}:
        return "ranked"
    raise ValueError(f"reward-model data must hold only preference pairs or only ranked lists; got {sorted(kinds)}")


# ------------------------------------------------------------------------------------- micro-steps


def _split(scores: torch.Tensor, k: int) -> torch.Tensor:
    """(K·B,) response-major scores → (B, K); (K·B, outputs) → (B, K, outputs)."""
    return split_responses(scores, k)


def pl_micro_step(model: Any, batch: Any, records: list[Any]) -> StepResult:
    k = batch.response_mask.shape[0] // len(batch.rows)
    mask = rank_mask(records, batch.rows, k).to(batch.response_mask.device)  # (B, K)
    scores = _split(model(batch.inputs, batch.response_mask), k)  # (B, K) best first
    losses = plackett_luce_loss(scores, mask)  # (B,)
    top = (scores[:, 0] > scores[:, 1]).float().detach()  # best beats second best
    return StepResult(losses.sum(), {"accuracy": top.sum()}, int(batch.inputs["attention_mask"].sum()))


def safer_first(records: list[Any], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per pair: swap (bool (B,)) when `rejected` is the safer answer, and the safe flags of the
    (safer, less safe) answers. Records without `safety` fail with the row and the fix."""
    swap, safe_a, safe_b = [], [], []
    for r in rows:
        s = records[r].safety
        if s is None:
            raise ValueError(f"row {r} (id {records[r].id!r}): cost-model data needs `safety` labels "
                             "(chosen_safe, rejected_safe, safer); use a safety split such as Shapes safety.jsonl")
        flip = s.safer == "rejected"
        swap.append(flip)
        safe_a.append(s.rejected_safe if flip else s.chosen_safe)
        safe_b.append(s.chosen_safe if flip else s.rejected_safe)
    return torch.tensor(swap), torch.tensor(safe_a), torch.tensor(safe_b)


def cost_micro_step(model: Any, batch: Any, records: list[Any], cfg: CostModelConfig) -> StepResult:
    costs = _split(model(batch.inputs, batch.response_mask), 2)  # (B, 2) [chosen, rejected]
    swap, safe_a, safe_b = (t.to(costs.device) for t in safer_first(records, batch.rows))
    safer = torch.where(swap, costs[:, 1], costs[:, 0])  # (B,)
    worse = torch.where(swap, costs[:, 0], costs[:, 1])  # (B,)
    losses = safe_rlhf_cost_loss(safer, worse, safe_a, safe_b, cfg.sign_weight)  # (B,)
    sign_ok = ((safer.detach() > 0) == ~safe_a).float() + ((worse.detach() > 0) == ~safe_b).float()
    return StepResult(losses.sum(), {"accuracy": (worse > safer).float().detach().sum(), "sign_accuracy": sign_ok.sum() / 2},
                      int(batch.inputs["attention_mask"].sum()))  # fmt: skip


# ------------------------------------------------------------------------------------------- eval


@torch.no_grad()
def score_pairs(model: Any, dataset: EncodedDataset, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(chosen scores (N,), rejected scores (N,)) of every pair in ``dataset``; (N, outputs) each for a
    head with several outputs."""
    was_training = model.training
    model.eval()
    cs, rs = [], []
    for start in range(0, len(dataset), batch_size):
        batch = dataset.batch(list(range(start, min(len(dataset), start + batch_size))))
        scores = _split(model(batch.inputs, batch.response_mask).float(), 2)  # (b, 2) or (b, 2, outputs)
        cs.append(scores[:, 0])
        rs.append(scores[:, 1])
    model.train(was_training)
    return torch.cat(cs), torch.cat(rs)


def model_view(cfg: Any, records: list[Any]) -> list[Any]:
    """The records as the model reads them: with their facts in front of the prompt when ``model.facts``."""
    return with_facts(list(records)) if getattr(cfg.model, "facts", False) else records


def eval_records(cfg: ScalarModelConfig) -> list[Any]:
    """The held-out rows (``eval.data``, first ``eval.limit``) as the model reads them."""
    return model_view(cfg, load_records(side_data(cfg.data, cfg.eval.data, "eval")).records[: cfg.eval.limit])


def evaluate_scalar_model(model: Any, processor: Any, cfg: ScalarModelConfig, kind: str,
                          spec: HeadSpec = HeadSpec()) -> dict[str, Any] | None:
    """Held-out report for a reward (``kind="reward"``) or cost model; None when no eval data is set.
    A head with several outputs is reported on its overall score (:meth:`HeadSpec.overall`) plus
    what its kind adds (:data:`vlalign.trainers.reward_heads.HEAD_REPORTS`)."""
    if cfg.eval.data is None:
        return None
    records = eval_records(cfg)
    dataset = EncodedDataset(records, processor, collate_config(cfg), "pair")
    chosen, rejected = score_pairs(model, dataset, cfg.eval.batch_size)
    if kind != "cost":
        heads_c, heads_r = chosen.reshape(-1, spec.outputs), rejected.reshape(-1, spec.outputs)  # (N, outputs)
        report = pairwise_report(spec.overall(heads_c), spec.overall(heads_r), cfg.eval.calibration_bins)
        return {**report, **HEAD_REPORTS.get(spec.kind)(spec, heads_c, heads_r, records)}
    swap, safe_a, safe_b = safer_first(records, list(range(len(records))))
    safer, worse = torch.where(swap, rejected, chosen), torch.where(swap, chosen, rejected)
    return safety_report(safer, worse, safe_a, safe_b)


# ------------------------------------------------------------------------------------------- runs


def save_scalar_model(run: Any, kind: str, extra: dict[str, Any] | None = None) -> dict[str, str]:
    """Backbone via the shared final save (LoRA: adapter + merged copy), then the head and a
    ``reward_model.json`` next to every saved backbone, so each folder loads on its own."""
    from vlalign.trainers.checkpoint import save_final

    head_model = run.acc.unwrap_model(run.model)
    written = save_final(run.acc, head_model.backbone, run.processor, run.output_dir, merge_lora=run.cfg.save_merged)
    if run.acc.is_main_process:
        for key, folder in written.items():
            head_model.save_head(folder)
            meta = {"kind": kind, "format": "vlalign-scalar-head-v1", "backbone": key,
                    "base_model": run.cfg.model.name_or_path, **(extra or {})}  # fmt: skip
            (Path(folder) / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return written


class Training(NamedTuple):
    """What a scalar trainer trains on: the encoded rows, the sum-style micro-step, the unit its sums are
    over (pairs, rankings, labelled aspect cells) and ``counts(batch)`` of that unit (None = one per row)."""

    dataset: Any
    micro_step: Any
    unit: str
    counts: Any = None


def _run_scalar(cfg: ScalarModelConfig, kind: str, records: list[Any] | None, make: Any,
                stop_after: int | None = None, spec: HeadSpec = HeadSpec(), wrap_model: Any = ScalarHeadModel,
                evaluate: Any = evaluate_scalar_model) -> dict[str, Any]:
    """Shared body of rm / cost-model / distill: start, evaluate, train, evaluate, save, write metrics.

    ``make(run) -> Training``; ``spec`` is the head put on the backbone (one score unless the reward
    model asks for an ensemble or aspects), ``wrap_model(backbone, head)`` the model around them and
    ``evaluate(model, processor, cfg, kind, spec)`` the held-out report before and after training."""
    run = start_run(cfg, records, wrap_model=lambda backbone: wrap_model(
        backbone, spec.make_head(hidden_size_of(backbone))))
    try:
        metrics: dict[str, Any] = {"kind": kind}
        if cfg.eval.before_training:
            metrics["before"] = evaluate(run.acc.unwrap_model(run.model), run.processor, cfg, kind, spec)
        train = make(run)
        attach_dataset(run, train.dataset)
        loss_fn = mean_over(train.unit, train.micro_step)
        counts = train.counts or (lambda b: {train.unit: len(b.rows)})
        run.stop_after = stop_after

        for step in run.steps():
            outcome = run.update(run.source.micro_batches(step), loss_fn, counts, where=step + 1)
            if run.end_step(step, outcome.metrics, outcome.finite):
                break

        metrics["after"] = evaluate(run.acc.unwrap_model(run.model), run.processor, cfg, kind, spec)
        facts = {"facts": True} if getattr(cfg.model, "facts", False) else {}  # a plain model's meta stays as it is
        saved = save_scalar_model(run, kind, {"max_length": cfg.data.max_length, **spec.meta(), **facts})
        summary = run.summary(saved)
        metrics.update(steps=summary["steps"], skipped_steps=summary["skipped_steps"], saved=saved,
                       stop_reason=summary["stop_reason"])
        if run.acc.is_main_process:
            (run.output_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    finally:
        run.close()
    return metrics


def train_reward_model(cfg: RewardModelConfig, records: list[Any] | None = None,
                       stop_after: int | None = None) -> dict[str, Any]:
    """The reward model ``model.kind`` names (:data:`RM_KINDS`); returns the metrics."""
    return RM_KINDS.get(cfg.model.kind)(cfg, records, stop_after)


@RM_KINDS.register("scalar")
def train_scalar_reward_model(cfg: RewardModelConfig, records: list[Any] | None = None,
                              stop_after: int | None = None) -> dict[str, Any]:
    """Bradley–Terry (pairs) or Plackett–Luce (ranked lists) reward model, with one score head, an
    ensemble of ``model.heads`` heads or one head per aspect; returns the metrics."""
    spec = head_spec(cfg)

    def make(run: Any) -> Training:
        collate_cfg = collate_config(cfg)
        rows = model_view(cfg, run.records)
        if _kind_of(run.records) == "ranked":
            if spec.kind != "single":
                raise ValueError(f"ranked lists train one score head (Plackett–Luce); this config asks for a "
                                 f"{spec.kind} head. Fix: set model.heads=1 and aspects=[], or train on preference pairs")
            ds = RankedDataset([_RankedAsPrompt(r) for r in rows], run.processor, collate_cfg)
            ds.check_all(cfg.data.num_workers)
            return Training(ds, lambda b: pl_micro_step(run.model, b, run.records), "rankings")
        micro_step, unit, counts = PAIR_TRAINING.get(spec.kind)(run, cfg, spec)
        ds = EncodedDataset(rows, run.processor, collate_cfg, "pair")
        ds.check_all(cfg.data.num_workers)
        return Training(ds, micro_step, unit, counts)

    return _run_scalar(cfg, "reward", records, make, stop_after, spec)


@RM_KINDS.register("critique")
def _train_critique(cfg: RewardModelConfig, records: list[Any] | None = None,
                    stop_after: int | None = None) -> dict[str, Any]:
    from vlalign.trainers.critique_rm import train_critique_reward_model

    return train_critique_reward_model(cfg, records, stop_after)


def train_cost_model(cfg: CostModelConfig, records: list[Any] | None = None,
                     stop_after: int | None = None) -> dict[str, Any]:
    """Safe RLHF cost model (cost > 0 ⇔ unsafe); returns the metrics."""

    def make(run: Any) -> Training:
        safer_first(run.records, list(range(len(run.records))))  # every row labelled, before any step
        ds = EncodedDataset(run.records, run.processor, collate_config(cfg), "pair")
        ds.check_all(cfg.data.num_workers)
        return Training(ds, lambda b: cost_micro_step(run.model, b, run.records, cfg), "pairs")

    return _run_scalar(cfg, "cost", records, make, stop_after)


def train_distill(cfg: DistillConfig, records: list[Any] | None = None,
                  stop_after: int | None = None) -> dict[str, Any]:
    """Student regresses the teacher's score of every chosen and rejected answer (squared error)."""
    from vlalign.rewards.learned import load_reward_model

    teacher = load_reward_model(cfg.teacher)
    kind = teacher.kind

    def make(run: Any) -> Training:
        ds = EncodedDataset(run.records, run.processor, collate_config(cfg), "pair")
        ds.check_all(cfg.data.num_workers)
        targets = teacher.score_records(run.records, cfg.teacher_batch_size)  # (N, 2) computed once
        run.log.info(f"teacher scores: mean {float(targets.mean()):.3f}, std {float(targets.std()):.3f}")

        def step(batch: Any) -> StepResult:
            scores = _split(run.model(batch.inputs, batch.response_mask), 2)  # (B, 2)
            target = targets[batch.rows].to(scores.device)  # (B, 2)
            err = (scores - target) ** 2  # (B, 2)
            return StepResult(err.sum(dim=1).sum(), {"mse": err.mean(dim=1).detach().sum()},
                              int(batch.inputs["attention_mask"].sum()))  # fmt: skip

        return Training(ds, step, "pairs")

    metrics = _run_scalar(cfg, kind, records, make, stop_after)
    metrics["teacher"] = str(cfg.teacher)
    return metrics
