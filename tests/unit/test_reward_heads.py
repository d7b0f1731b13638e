"""Reward models with several outputs (ensembles, aspects): heads, losses, reports and source views by hand."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from vlalign.data.records import PreferenceRecord
from vlalign.models.heads import MultiHead, ScalarHead, ScalarHeadModel
from vlalign.objectives import weighted_aspects
from vlalign.rewards.multi_head import HEAD_KINDS, HeadSpec, check_source_options
from vlalign.trainers.reward_heads import (
    aspect_cells,
    aspect_micro_step,
    aspect_ratings,
    aspects_report,
    bt_micro_step,
    ensemble_micro_step,
    ensemble_report,
    split_responses,
)


def t(*values):
    return torch.tensor(values, dtype=torch.float32)


def sigmoid_nll(x: float) -> float:
    return -math.log(1.0 / (1.0 + math.exp(-x)))


class FixedScores(torch.nn.Module):
    """Stands in for a ScalarHeadModel: returns the given response-major scores (k·B, outputs)."""

    def __init__(self, scores: torch.Tensor) -> None:
        super().__init__()
        self.scores = torch.nn.Parameter(scores.clone())

    def forward(self, inputs, mask=None):
        return self.scores


def batch_of(rows: list[int]):
    attn = torch.ones(2 * len(rows), 3, dtype=torch.long)
    return SimpleNamespace(inputs={"attention_mask": attn}, response_mask=attn, rows=rows)


def pair(rid: str, chosen: dict | None = None, rejected: dict | None = None) -> PreferenceRecord:
    ratings = {} if chosen is None else {"chosen": chosen, "rejected": rejected or {}}
    return PreferenceRecord(rid, [], "Describe.", "good", "bad", ratings=ratings)


# ----------------------------------------------------------------------------------- heads


def test_multi_head_by_hand_and_on_a_backbone(tiny_model_dir):
    head = MultiHead(2, 3)
    with torch.no_grad():
        head.proj.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
        head.proj.bias.copy_(t(0.0, 0.5, -1.0))
    # (3, 4) -> (3, 4 + 0.5, 3 + 4 − 1)
    assert head(t(3.0, 4.0).view(1, 2)).tolist() == [[3.0, 4.5, 6.0]]
    assert MultiHead(2, 1)(torch.zeros(5, 2)).shape == (5, 1)  # K stays an axis even for one output

    from transformers import AutoModelForImageTextToText

    backbone = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava")).eval()
    rm = ScalarHeadModel(backbone, HeadSpec(heads=3).make_head(backbone.config.text_config.hidden_size))
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8], [5, 6, 7, 1]]),
              "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])}
    with torch.no_grad():
        values, scores = rm.values(inputs), rm.score(inputs)  # (B, T, K), (B, K)
    assert values.shape == (2, 4, 3) and scores.shape == (2, 3)
    torch.testing.assert_close(scores, torch.stack([values[0, 3], values[1, 2]]))  # last attended token
    assert float(scores.std(dim=1).min()) > 0  # each head drew its own init: they disagree from the start


def test_single_head_spec_is_the_plain_scalar_head():
    # A one-head reward model must be today's model: same class, same RNG draws, same saved keys, (B,) scores.
    torch.manual_seed(3)
    built = HeadSpec().make_head(8)
    torch.manual_seed(3)
    plain = ScalarHead(8)
    assert type(built) is ScalarHead
    assert built.state_dict().keys() == plain.state_dict().keys() == {"proj.weight", "proj.bias"}
    assert all(torch.equal(built.state_dict()[k], plain.state_dict()[k]) for k in plain.state_dict())
    assert HeadSpec().meta() == {} and HeadSpec.from_meta({"kind": "reward"}) == HeadSpec()
    # the response-major split is a view: the same numbers as the (K·B,) → (B, K) transpose it replaced
    flat = torch.randn(6)
    assert torch.equal(split_responses(flat, 2), flat.view(2, -1).T)
    assert split_responses(torch.randn(6, 4), 2).shape == (3, 2, 4)


def test_head_spec_meta_round_trip_and_errors():
    ens, asp = HeadSpec(heads=4), HeadSpec(aspects=("a", "b"), aspect_weights=(0.25, 0.75))
    assert (ens.kind, ens.outputs, ens.meta()) == ("ensemble", 4, {"heads": 4})
    assert (asp.kind, asp.outputs) == ("aspects", 2)
    assert HeadSpec.from_meta({"kind": "reward", **ens.meta()}) == ens
    assert HeadSpec.from_meta(asp.meta()) == asp
    with pytest.raises(ValueError, match="either an ensemble"):
        HeadSpec(heads=2, aspects=("a",), aspect_weights=(1.0,))
    with pytest.raises(ValueError, match="listed twice"):
        HeadSpec(aspects=("a", "a"), aspect_weights=(1.0, 1.0))
    with pytest.raises(ValueError, match="expected scores \\(N, 4\\)"):
        ens.overall(torch.zeros(3, 2))


def test_overall_scores_by_hand():
    # ensemble (1, 2, 3, 4) → mean 2.5; aspects (1, 3) with weights (0.25, 0.75) → 0.25 + 2.25 = 2.5
    assert HeadSpec(heads=4).overall(t(1.0, 2.0, 3.0, 4.0).view(1, 4)).tolist() == [2.5]
    spec = HeadSpec(aspects=("a", "b"), aspect_weights=(0.25, 0.75))
    assert spec.overall(t(1.0, 3.0, 4.0, 0.0).view(2, 2)).tolist() == [2.5, 1.0]
    assert HeadSpec().overall(t(7.0, -1.0).view(2, 1)).tolist() == [7.0, -1.0]
    with pytest.raises(ValueError, match="3 weights for 2 aspect scores"):
        weighted_aspects(torch.zeros(4, 2), t(1.0, 1.0, 1.0))


# ------------------------------------------------------------------------------ source views


def test_ensemble_source_view_conservative_by_hand():
    # members (1, 2, 3, 4): mean 2.5, population std √1.25 = 1.118034, variance 1.25
    spec, scores = HeadSpec(heads=4), t(1.0, 2.0, 3.0, 4.0, 2.0, 2.0, 2.0, 2.0).view(2, 4)
    view = HEAD_KINDS.get("ensemble").view
    reward, parts = view(spec, scores, {"aggregate": "conservative", "coef": 2.0})
    assert torch.allclose(reward, t(2.5 - 2 * 1.118034, 2.0), atol=1e-6)
    assert torch.allclose(parts["ensemble_mean"], t(2.5, 2.0))
    assert torch.allclose(parts["ensemble_std"], t(1.118034, 0.0), atol=1e-6)
    reward, _ = view(spec, scores, {"aggregate": "penalty", "coef": 0.5})
    assert torch.allclose(reward, t(2.5 - 0.5 * 1.25, 2.0))  # mean − c·variance
    assert torch.equal(view(spec, scores, {})[0], t(2.5, 2.0))  # default: the plain mean


def test_aspect_source_view_by_hand():
    spec = HeadSpec(aspects=("faith", "help"), aspect_weights=(0.5, 2.0))
    scores = t(1.0, 3.0, -2.0, 4.0).view(2, 2)  # (N=2, A=2)
    view = HEAD_KINDS.get("aspects").view
    reward, parts = view(spec, scores, {})
    assert reward.tolist() == [0.5 + 6.0, -1.0 + 8.0]  # the saved weights: the model's overall score
    assert parts["aspect/faith"].tolist() == [1.0, -2.0] and parts["aspect/help"].tolist() == [3.0, 4.0]
    assert view(spec, scores, {"aspects": ["help"]})[0].tolist() == [3.0, 4.0]  # one aspect alone
    assert view(spec, scores, {"aspects": "faith"})[0].tolist() == [1.0, -2.0]
    assert view(spec, scores, {"aspects": {"faith": 2.0, "help": -1.0}})[0].tolist() == [-1.0, -8.0]


def test_source_options_must_fit_the_head():
    with pytest.raises(ValueError, match="'aggregate' applies to ensemble .* model.heads > 1"):
        check_source_options(HeadSpec(), {"aggregate": "conservative"}, "source 'learned'")
    with pytest.raises(ValueError, match="'aspects' applies to aspects"):
        check_source_options(HeadSpec(heads=3), {"aspects": ["a"]}, "source 'learned'")
    with pytest.raises(ValueError, match="Did you mean 'conservative'"):
        check_source_options(HeadSpec(heads=3), {"aggregate": "conservatve"}, "x")
    with pytest.raises(ValueError, match="coef must be >= 0"):
        check_source_options(HeadSpec(heads=3), {"coef": -1.0}, "x")
    with pytest.raises(ValueError, match=r"\['speed'\] — the model scores the aspects \['a'\]"):
        check_source_options(HeadSpec(aspects=("a",), aspect_weights=(1.0,)), {"aspects": ["speed"]}, "x")


# --------------------------------------------------------------------------- losses by hand


def test_ensemble_micro_step_by_hand():
    cfg = SimpleNamespace(seed=0, bootstrap=False, use_margins=False, center_coef=0.0)
    # B = 2 pairs, K = 2 heads; response-major: rows 0-1 chosen, rows 2-3 rejected
    scores = t(1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0).view(4, 2)
    res = ensemble_micro_step(FixedScores(scores), batch_of([0, 6]), [], cfg)
    # per pair: (BT(1) + BT(0)) / 2 = (0.313262 + 0.693147) / 2; two equal pairs
    per_pair = (sigmoid_nll(1.0) + sigmoid_nll(0.0)) / 2
    assert res.loss_sum.item() == pytest.approx(2 * per_pair, abs=1e-6)
    assert res.metric_sums["accuracy"].item() == 2.0  # mean margin 0.5 > 0 on both pairs
    assert res.metric_sums["margin"].item() == pytest.approx(1.0)
    # std over heads: chosen (1, 0) → 0.5, rejected (0, 0) → 0; mean 0.25 per pair
    assert res.metric_sums["disagreement"].item() == pytest.approx(0.5)
    res.loss_sum.backward()  # the loss reaches the scores

    # bootstrap: Poisson(1) weights of (seed 0, row, head): row 0 → (0, 2), row 6 → (2, 1)
    cfg.bootstrap = True
    res = ensemble_micro_step(FixedScores(scores), batch_of([0, 6]), [], cfg)
    row0 = (0 * sigmoid_nll(1.0) + 2 * sigmoid_nll(0.0)) / 2
    row6 = (2 * sigmoid_nll(1.0) + 1 * sigmoid_nll(0.0)) / 2
    assert res.loss_sum.item() == pytest.approx(row0 + row6, abs=1e-6)


def test_single_head_micro_step_by_hand():
    cfg = SimpleNamespace(use_margins=False, center_coef=0.0)
    res = bt_micro_step(FixedScores(t(2.0, 0.0, 0.0, 1.0)), batch_of([0, 1]), [], cfg)  # pairs (2, 0), (0, 1)
    assert res.loss_sum.item() == pytest.approx(sigmoid_nll(2.0) + sigmoid_nll(-1.0), abs=1e-6)
    assert res.metric_sums["accuracy"].item() == 1.0


def test_aspect_micro_step_by_hand():
    spec = HeadSpec(aspects=("faith", "help"), aspect_weights=(0.5, 0.5))
    records = [pair("p0", {"faith": 5, "help": 3}, {"faith": 1, "help": 3}),  # faith +1, help tie
               pair("p1", {"faith": 2}, {"faith": 4, "help": 5})]  # faith −1, help unrated on chosen
    chosen, rejected = aspect_ratings(records, [0, 1], spec.aspects)
    assert chosen[1, 1].isnan() and rejected.tolist() == [[1.0, 3.0], [4.0, 5.0]]
    # scores (2B, A): chosen rows (2, 7), (1, 0); rejected rows (0, 1), (0, 0)
    scores = t(2.0, 7.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0).view(4, 2)
    res = aspect_micro_step(FixedScores(scores), batch_of([0, 1]), records, spec)
    # labelled cells only: p0 faith −log σ(2) = 0.126928; p1 faith −log σ(−(1 − 0)) = 1.313262
    assert res.loss_sum.item() == pytest.approx(sigmoid_nll(2.0) + sigmoid_nll(-1.0), abs=1e-6)
    assert res.metric_sums["accuracy"].item() == 1.0  # p0 faith right, p1 faith wrong
    assert aspect_cells(records, spec)(batch_of([0, 1])) == {"aspect_pairs": 2.0}


def test_rows_without_ratings_fail_naming_row_and_field():
    records = [pair("p0", {"faith": 5}, {"faith": 1}), pair("p1"), pair("p2", {"speed": 1}, {"speed": 2})]
    with pytest.raises(ValueError, match=r"row 1 \(id 'p1'\): field `ratings` rates none of the aspects \['faith'\]"):
        aspect_ratings(records, [0, 1], ("faith",))
    with pytest.raises(ValueError, match=r"row 2 \(id 'p2'\).*chosen rates \['speed'\]"):
        aspect_ratings(records, [2], ("faith",))
    chosen, _ = aspect_ratings(records, [0, 1, 2], ("faith",), strict=False)  # held-out rows: NaN = unrated
    assert chosen[0, 0] == 5.0 and chosen[1:, 0].isnan().all()


# ------------------------------------------------------------------------------ held-out reports


def test_ensemble_report_by_hand():
    chosen = t(1.0, 3.0, 0.0, 0.0).view(2, 2)  # (N=2, K=2)
    rejected = t(0.0, 0.0, 1.0, 0.0).view(2, 2)
    rep = ensemble_report(HeadSpec(heads=2), chosen, rejected, [])
    # head 0: pair 0 right, pair 1 wrong → 0.5; head 1: pair 0 right, pair 1 a tie (half) → 0.75
    assert rep["head_accuracy"] == [0.5, 0.75]
    # score std over heads: (1, 3) → 1, (0, 0) → 0, (0, 0) → 0, (1, 0) → 0.5; mean 0.375
    assert rep["disagreement"] == pytest.approx(0.375)
    # margins (1, 3): mean 2 (right), std 1; (−1, 0): mean −0.5 (wrong), std 0.5
    assert rep["margin_std_right"] == pytest.approx(1.0) and rep["margin_std_wrong"] == pytest.approx(0.5)


def test_aspects_report_by_hand():
    spec = HeadSpec(aspects=("faith", "help"), aspect_weights=(0.5, 0.5))
    records = [pair("p0", {"faith": 5, "help": 1}, {"faith": 1, "help": 4}), pair("p1", {"faith": 3}, {"faith": 2}),
               pair("p2")]  # an unrated held-out row is counted nowhere, not an error
    chosen, rejected = t(1.0, 1.0, 0.0, 0.0, 5.0, 5.0).view(3, 2), t(0.0, 0.0, 1.0, 0.0, 0.0, 0.0).view(3, 2)
    rep = aspects_report(spec, chosen, rejected, records)["aspects"]
    assert rep["faith"] == {"accuracy": 0.5, "n_labelled": 2}  # p0 right (1 > 0), p1 wrong (0 < 1)
    assert rep["help"] == {"accuracy": 0.0, "n_labelled": 1}  # p0: rejected rated higher, model says chosen
