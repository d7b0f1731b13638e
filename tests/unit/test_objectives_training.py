"""The objectives train: a few dozen optimizer steps on a toy policy move the measured quantity.

Toy policy: one softmax over A "responses" (a bandit). Each objective is used exactly the way a
trainer would use it; the test measures the change, not a hard-coded result.
"""

import torch

import vlalign.objectives as O

A = 4  # responses


def _sgd_step(param, lr):
    """Plain gradient descent (torch.optim's first step costs seconds of one-off imports on CPU)."""
    with torch.no_grad():
        param -= lr * param.grad
    param.grad = None


def _policy():
    torch.manual_seed(0)
    return torch.zeros(A, requires_grad=True)  # logits; uniform start: p = ¼ each


def test_dpo_raises_chosen_probability_and_reward_accuracy(learning):
    logits = _policy()
    ref = torch.log_softmax(logits.detach(), -1)  # frozen reference = start policy
    chosen, rejected = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2])  # 0 ≻ 1 ≻ 2
    first = None
    for _ in range(40):
        logp = torch.log_softmax(logits, -1)
        out = O.dpo_loss(logp[chosen], logp[rejected], ref[chosen], ref[rejected], beta=0.5)
        loss = out.losses.mean()
        first = loss.item() if first is None else first
        loss.backward()
        _sgd_step(logits, 1.0)
    p = torch.softmax(logits.detach(), -1)
    # starts at log 2 = 0.693; no randomness: 0.2175 on every seed 0-4 and kernel AVX2 / default
    assert learning.below("last / first loss", loss.item() / first, 0.5)
    assert p[0] > p[1] > p[2]
    assert O.preference_accuracy(out.chosen_rewards, out.rejected_rewards).item() == 1.0


def test_grpo_ppo_loop_learns_the_rewarded_response(learning):
    logits = _policy()
    gen = torch.Generator().manual_seed(learning.seed)
    group, groups = 8, 4
    for _ in range(30):
        with torch.no_grad():
            probs = torch.softmax(logits, -1)
            actions = torch.multinomial(probs.expand(groups, A), group, replacement=True, generator=gen).reshape(-1)
            old_logp = torch.log(probs[actions])[:, None]  # (N, 1): one-token responses
        rewards = (actions == 2).float()  # (N,) rule-based reward
        adv = O.grpo_advantages(rewards, group)[:, None]  # (N, 1)
        logp = torch.log_softmax(logits, -1)[actions][:, None]
        out = O.ppo_policy_loss(logp, old_logp, adv, torch.ones_like(adv))
        out.loss.backward()
        _sgd_step(logits, 0.5)
    # from 0.25; seeds 0-4 (sampling) x kernels AVX2 / default: 0.969-0.979
    assert learning.above("p(rewarded)", torch.softmax(logits.detach(), -1)[2], 0.9)


def test_reward_model_bradley_terry_learns_ordering(learning):
    scores = torch.zeros(A, requires_grad=True)  # one learnable score per response
    chosen, rejected = torch.tensor([3, 3, 2]), torch.tensor([2, 0, 0])
    for _ in range(50):
        loss = O.bradley_terry_loss(scores[chosen], scores[rejected]).mean()
        loss.backward()
        _sgd_step(scores, 0.5)
    s = scores.detach()
    # from log 2; no randomness: 0.0697 on every seed 0-4 and kernel AVX2 / default
    assert s[3] > s[2] > s[0] and learning.below("last loss", loss.item(), 0.3)


def test_lagrangian_tracks_cost_limit():
    # a cost that falls as λ grows (the policy becomes safer when penalised): J_C(λ) = 2 / (1 + λ)
    lam = O.LagrangeMultiplier(init_value=0.1, cost_limit=0.5, lr=0.5)
    for _ in range(300):
        lam.update(2.0 / (1.0 + float(lam.value)))
    # equilibrium: 2 / (1 + λ) = 0.5 → λ = 3
    assert abs(float(lam.value) - 3.0) < 0.05
