"""Supervised fine-tuning: maximise log p(answer | image, prompt) on the response tokens only.

The loss is the token-mean NLL over the whole global batch (all micro-batches, all processes), so
gradient accumulation and process count do not change the objective. With ``eval_steps`` and held-out
rows (``data.eval`` / ``data.eval_fraction``) the same token-mean NLL is logged as ``eval/loss``.
"""

from __future__ import annotations

from typing import Any

from vlalign.data.collate import EncodedDataset
from vlalign.models.logprobs import response_logprobs
from vlalign.trainers.configs import SFTConfig
from vlalign.trainers.replay import Replay, build_replay, replay_nll
from vlalign.trainers.run import attach_dataset, collate_config, evaluate_sums, start_run
from vlalign.trainers.step import StepResult, mean_over


def sft_micro_step(model: Any, batch: Any, replay: Replay | None = None) -> StepResult:
    """Sum of response-token NLLs of one micro-batch (the core divides by the global token count).

    With ``replay``, each row's replay row joins the batch: + weight × its token NLL sum, and its
    tokens count in the global token total (``units`` below), so weight 1 = plain extra SFT rows."""
    logps, mask = response_logprobs(model, batch.inputs, batch.response_mask)  # (B, T), (B, T)
    nll_sum = -(logps * mask).sum()
    loss_sum, metrics = nll_sum, {"nll": nll_sum.detach()}
    tokens = int(batch.inputs["attention_mask"].sum())
    if replay is not None:
        rb = replay.batch(batch.rows)
        replay_sum = replay_nll(model, rb)[0].sum()
        loss_sum = loss_sum + replay.weight * replay_sum
        metrics["replay_nll"] = replay_sum.detach()
        tokens += int(rb.inputs["attention_mask"].sum())
    return StepResult(loss_sum=loss_sum, metric_sums=metrics, tokens=tokens)


def train_sft(cfg: SFTConfig, records: list[Any] | None = None, stop_after: int | None = None) -> dict[str, Any]:
    """Run SFT as configured; returns the run summary (``final/`` holds the trained model)."""
    run = start_run(cfg, records, stream=("sft", None))
    try:
        collate_cfg = collate_config(cfg)
        if not cfg.data.streaming:  # a stream encodes its rows as it reads them (and reports bad ones then)
            dataset = EncodedDataset(run.records, run.processor, collate_cfg, "sft")
            dataset.check_all(cfg.data.num_workers)
            attach_dataset(run, dataset)
        replay = build_replay(cfg, run.processor, collate_cfg, run.log)

        def counts(b: Any) -> dict[str, float]:  # response tokens of the batch (+ those of its replay rows)
            return {"response_tokens": float(b.response_mask.sum()) + (replay.response_tokens(b.rows) if replay else 0)}

        loss_fn = mean_over("response_tokens", lambda b: sft_micro_step(run.model, b, replay))
        if run.eval_records:
            held = EncodedDataset(run.eval_records, run.processor, collate_cfg, "sft")
            held.check_all()
            run.evaluate = lambda: evaluate_sums(run, held, lambda b: sft_micro_step(run.model, b),
                                                 lambda b: float(b.response_mask.sum()), cfg.per_device_batch_size)
        run.stop_after = stop_after

        for step in run.steps():
            outcome = run.update(run.source.micro_batches(step), loss_fn, counts, where=step + 1)
            if run.end_step(step, outcome.metrics, outcome.finite):
                break
    except BaseException:
        run.close()
        raise
    return run.finish()
