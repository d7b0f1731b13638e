"""Segment-level rewards in PPO (``reward_granularity: segment``): judged character spans land on the
right response tokens of a real tokenizer, and on a bigram policy one update with segment rewards
moves exactly the tokens of the judged segments (by hand) where sequence-level reward, whose total is
the same, moves nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_rl_helpers import hand_run

from vlalign.rewards.base import JudgedSpan, RewardOutput, Sample


class CharJudge:
    """Toy verifier: every 'x' in an answer is right (+1), every 'y' wrong (−1), each judged as a
    one-character span; the answer's score is the sum."""

    name = "test_char_judge"

    def score(self, samples):
        spans = [[JudgedSpan(i, i + 1, 1.0 if ch == "x" else -1.0) for i, ch in enumerate(s.response)]
                 for s in samples]
        return RewardOutput(rewards=torch.tensor([sum(sp.value for sp in row) for row in spans]), spans=spans)


class XYTokenizer:
    """Token 0 decodes to 'x', token 1 to 'y' (the bigram policy's two-word vocabulary)."""

    def decode(self, ids, skip_special_tokens=True):
        return "".join("xy"[i] for i in ids)


def test_span_ends_map_to_the_tokens_of_a_real_tokenizer(tiny_model_dir):
    from transformers import AutoProcessor

    from vlalign.rewards.shapes_rules import check_mentions
    from vlalign.trainers.segment_rewards import piece_ends, span_columns

    tok = AutoProcessor.from_pretrained(tiny_model_dir("llava")).tokenizer
    text = "The image shows a red circle and a blue square."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # the tiny tokenizer splits on words: The| image| shows| a| red| circle| and| a| blue| square|.
    assert [tok.decode([i]) for i in ids][5] == " circle" and [tok.decode([i]) for i in ids][9] == " square"
    ends = piece_ends(tok, ids)
    assert ends[:3] == [3, 9, 15] and ends[-1] == len(text)
    # "a red circle" = chars [16, 28) ends in token 5; "a blue square" = [33, 46) in token 9. In an
    # experience row the response starts at column 4 (after a 4-token prompt): columns 9 and 13.
    scene = {"objects": [{"color": "red", "shape": "circle"}]}
    spans = [[JudgedSpan(c.mention.start, c.mention.end, 0.0) for c in check_mentions(text, scene)]]
    assert [(s.start, s.end) for s in spans[0]] == [(16, 28), (33, 46)]
    input_ids = torch.tensor([[7, 7, 7, 7, *ids, 0]])
    mask = torch.tensor([[0] * 4 + [1] * len(ids) + [0]])
    assert span_columns(tok, input_ids, mask, spans) == [[9, 13]]


def _cfg(granularity):
    from vlalign.trainers.ppo import PPOConfig

    return PPOConfig.model_validate({
        "output_dir": "unused", "model": {"name_or_path": "unused"}, "data": {"train": "unused"},
        "reward": {"name": "test_letter"}, "optimizer": "sgd", "learning_rate": 1.0, "lr_scheduler": "constant",
        "max_grad_norm": None, "critic": "separate", "gamma": 1.0, "lam": 1.0, "whiten_advantages": False,
        "kl_coef": 0.0, "reference": "none", "reward_granularity": granularity,
    })


def _one_update(granularity):
    from test_rl_ppo import Bigram

    from vlalign.rollout.experience import Experience
    from vlalign.trainers.ppo import (
        critics,
        final_advantages,
        gae_advantages,
        ppo_loss,
        reward_tokens,
        rollout_values,
    )
    from vlalign.trainers.rl_common import update
    from vlalign.trainers.segment_rewards import KeepOutput

    cfg = _cfg(granularity)
    policy = Bigram()
    run = hand_run(cfg, policy, critics(cfg, ["value"])(policy))
    run.processor, run.reward = XYTokenizer(), KeepOutput(CharJudge())
    # after prompt token 0: row 0 answers "xy" (right, then wrong), row 1 "yx" (wrong, then right); both score 0
    ids = torch.tensor([[0, 0, 1], [0, 1, 0]])
    exp = Experience(input_ids=ids, attention_mask=torch.ones_like(ids), response_mask=torch.tensor([[0.0, 1, 1]] * 2),
                     image_inputs={}, group_ids=torch.arange(2), texts=["xy", "yx"], prompts=["", ""],
                     metas=[{}, {}], images=[[], []])
    exp.rewards = run.reward.score([Sample([], "", t) for t in exp.texts]).rewards
    assert exp.rewards.tolist() == [0.0, 0.0]
    values = rollout_values(run, exp, ["value"])["value"]
    adv, returns = gae_advantages(cfg, exp, reward_tokens(run, exp), values, None)
    exp.values, exp.returns, exp.advantages = values, returns, final_advantages(run, adv, exp.response_mask)
    update(run, exp, ppo_loss(run, ["value"]), step=0)
    return adv, run.policy.head.weight.detach()


def test_segment_rewards_credit_the_judged_tokens_by_hand():
    adv, weight = _one_update("segment")
    # token rewards: row 0 (+1, −1), row 1 (−1, +1); V = 0, γ = λ = 1 → A = reward-to-go:
    #   row 0: (+1 − 1, −1) = (0, −1);  row 1: (0, +1)
    assert adv.tolist() == [[0.0, 0.0, -1.0], [0.0, 0.0, 1.0]]
    # seq_mean_token_mean over 2 rows × 2 tokens: L = −¼ Σ A·log π. Only the second tokens have A ≠ 0:
    #   "y" after "x" (z = W[:, 0]), A = −1: ∂L/∂z = ¼·(onehot(y) − (½, ½)) = (−⅛, ⅛)
    #   "x" after "y" (z = W[:, 1]), A = +1: ∂L/∂z = −¼·(onehot(x) − (½, ½)) = (−⅛, ⅛)
    # SGD, lr 1, from W = 0: both columns become (⅛, −⅛): "x" more likely, "y" less, after either token
    assert torch.allclose(weight, torch.tensor([[0.125, 0.125], [-0.125, -0.125]]), atol=1e-6)


def test_sequence_reward_with_the_same_totals_moves_nothing():
    adv, weight = _one_update("sequence")
    assert adv.abs().sum().item() == 0.0  # both answers score 0: no signal at sequence level
    assert torch.equal(weight, torch.zeros(2, 2))


def test_segment_granularity_needs_a_source_that_judges_spans():
    from vlalign.trainers.segment_rewards import segment_token_rewards

    with pytest.raises(ValueError, match="judges spans.*'test_letter'"):
        segment_token_rewards(XYTokenizer(), None, torch.zeros(1), RewardOutput(torch.zeros(1)), source="test_letter")
