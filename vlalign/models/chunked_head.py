"""Output layer + log-softmax + gather (+ entropy), chunked over tokens, with its own backward pass.

WHY: the log-prob of a response token needs the whole row of logits (for the log-sum-exp), so the
straightforward ``log_softmax(lm_head(h))`` materialises (N, V) logits, their (N, V) log-softmax,
and autograd keeps both for the backward pass: with Qwen2-VL's 151,936-word vocabulary that is
0.6 MB per token per tensor, ~800 MB for a batch of 4 pairs with 160-token responses, and most of a
step's memory traffic. Here the logits exist one tile at a time (a chunk of tokens × a slice of the
vocabulary, sized to stay in cache): the forward keeps only log-sum-exp (N,) and entropy (N,),
accumulated online over the vocabulary slices, and the backward recomputes each tile's logits and
turns them straight into the gradients of the hidden states and of the output layer's slice:

    z = cap·tanh(l / cap) / τ   (l = h·Wᵀ + b; no cap → z = l / τ),   p = softmax(z)
    logp_t = z_t[y_t] − lse_t,     H_t = lse_t − Σ_j p_tj z_tj
    ∂logp_t/∂z_tj = 1[j = y_t] − p_tj,     ∂H_t/∂z_tj = −p_tj (z_tj − lse_t + H_t)
    ∂z/∂l = (1 − tanh²(l / cap)) / τ

The same numbers as the unchunked path up to float rounding (tested to 1e-5 with gradients, and by
``torch.autograd.gradcheck`` in float64); it applies when the output layer is a plain ``nn.Linear``
(no LoRA on the head, no quantised weight, no hooks), else the caller keeps the unchunked path.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

# Tiles: at most ROWS tokens at a time (each token chunk reads the output layer's weight once per pass),
# and within them vocabulary tiles of TILE_ELEMENTS // rows words, so one tile's logits, probabilities
# and gradient (8 MiB each in float32) stay in the CPU's cache while the weight streams through once.
ROWS = 4096
TILE_ELEMENTS = 1 << 21


def tile_shape(rows: int, vocab: int, max_rows: int | None = None, elements: int | None = None) -> tuple[int, int]:
    """(tokens per chunk, words per vocabulary tile) for ``rows`` tokens over a ``vocab``-word head."""
    n = max(1, min(rows, max_rows or ROWS))
    v = max(64, (elements or TILE_ELEMENTS) // n)
    return n, min(v, vocab)


def _logits(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None,
            temperature: float) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(z, tanh(l / cap) or None) for hidden rows h (n, H) and a slice of the head: (n, v) in float32
    (float64 stays float64), as ``project_logits`` computes them."""
    z = F.linear(h, weight, bias)  # (n, v)
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    tanh = None
    if softcap:
        tanh = torch.tanh(z / softcap)
        z = tanh * softcap
    if temperature != 1.0:
        z = z / temperature
    return z, tanh


def _tiles(n_rows: int, vocab: int, rows: int, cols: int):
    """Yield (token slice, vocabulary slice) pairs, vocabulary innermost."""
    for s in range(0, n_rows, rows):
        for a in range(0, vocab, cols):
            yield slice(s, s + rows), slice(a, a + cols)


def _target_in_tile(targets: torch.Tensor, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows whose target word lies in the vocabulary slice, that word's column in the tile)."""
    inside = (targets >= cols.start) & (targets < cols.stop)
    rows = inside.nonzero().squeeze(-1)
    return rows, targets[rows] - cols.start


class _ChunkedHeadLogprobs(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                targets: torch.Tensor, temperature: float, softcap: float | None, rows: int, cols: int,
                want_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.set_materialize_grads(False)  # an unused output (entropy) gets None, not a zero tensor to multiply
        n, vocab = hidden.shape[0], weight.shape[0]
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        # online log-sum-exp over vocabulary tiles: running max m, Σ exp(z − m), Σ exp(z − m)·z
        m = torch.full((n,), -torch.inf, dtype=dtype, device=hidden.device)  # (N,)
        s_exp = torch.zeros_like(m)  # (N,)
        s_ez = torch.zeros_like(m)  # (N,)
        target_logit = torch.zeros_like(m)  # (N,)
        for r, c in _tiles(n, vocab, rows, cols):
            z, _ = _logits(hidden[r], weight[c], None if bias is None else bias[c], softcap, temperature)  # (n, v)
            hit, col = _target_in_tile(targets[r], c)
            target_logit[r.start + hit] = z[hit, col]  # before z is overwritten below
            m_new = torch.maximum(m[r], z.amax(-1))  # (n,)
            scale = torch.exp(m[r] - m_new)  # (n,)  exp(-inf) = 0 on the first tile
            if want_entropy:
                e = torch.exp(z - m_new[:, None])  # (n, v)
                s_exp[r] = s_exp[r] * scale + e.sum(-1)
                s_ez[r] = s_ez[r] * scale + e.mul_(z).sum(-1)
            else:  # in place: one tile buffer, two passes
                s_exp[r] = s_exp[r] * scale + z.sub_(m_new[:, None]).exp_().sum(-1)
            m[r] = m_new
        lse = m + torch.log(s_exp)  # (N,)
        entropy = lse - s_ez / s_exp if want_entropy else torch.zeros_like(lse)  # H = lse − Σ p·z
        ctx.save_for_backward(hidden, weight, bias, targets, lse, entropy)
        ctx.temperature, ctx.softcap, ctx.rows, ctx.cols, ctx.want_entropy = temperature, softcap, rows, cols, want_entropy
        return target_logit - lse, entropy

    @staticmethod
    def backward(ctx: Any, g_logp: torch.Tensor | None, g_entropy: torch.Tensor | None):
        hidden, weight, bias, targets, lse, entropy = ctx.saved_tensors
        use_entropy = ctx.want_entropy and g_entropy is not None
        if g_logp is None and not use_entropy:  # neither output reached the loss
            return (None,) * 9
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        acc = torch.promote_types(weight.dtype, torch.float32)  # gradient accumulation dtype
        grad_h = torch.zeros_like(hidden, dtype=acc) if need_h else None
        grad_w = torch.zeros_like(weight, dtype=acc) if need_w else None
        grad_b = torch.zeros_like(bias, dtype=acc) if need_b and bias is not None else None
        for r, c in _tiles(hidden.shape[0], weight.shape[0], ctx.rows, ctx.cols):
            h, w = hidden[r], weight[c]
            z, tanh = _logits(h, w, None if bias is None else bias[c], ctx.softcap, ctx.temperature)  # (n, v)
            z.sub_(lse[r, None])  # log p, in place
            p = z.exp()  # (n, v)
            # ∂(g·logp_y + g_H·H)/∂z = −p·(g + g_H·(log p + H)) + g·onehot(y)
            if use_entropy:
                coef = z.add_(entropy[r, None]).mul_(g_entropy[r, None])  # g_H·(log p + H), in place
                if g_logp is not None:
                    coef.add_(g_logp[r, None])
                dz = p.mul_(coef).neg_()  # (n, v), in place
            else:
                dz = p.mul_(-g_logp[r, None])  # (n, v), in place
            if g_logp is not None:
                hit, col = _target_in_tile(targets[r], c)
                dz[hit, col] += g_logp[r][hit]
            if ctx.temperature != 1.0:
                dz.div_(ctx.temperature)
            if tanh is not None:
                dz.mul_(1.0 - tanh * tanh)
            dl = dz.to(weight.dtype)  # (n, v): the gradient of F.linear's output, in its dtype
            if grad_h is not None:
                grad_h[r] += (dl @ w).to(acc)
            if grad_w is not None:
                grad_w[c].addmm_(dl.t().to(acc), h.to(acc))
            if grad_b is not None:
                grad_b[c] += dl.sum(0).to(acc)
        return (None if grad_h is None else grad_h.to(hidden.dtype), None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(bias.dtype), None, None, None, None, None, None)


def plain_linear_head(head: Any) -> bool:
    """True when ``head`` is exactly ``nn.Linear`` with nothing hooked onto it (its weight and bias are
    what its forward multiplies by); LoRA-wrapped, quantised or hooked heads are not."""
    return (type(head) is torch.nn.Linear and not head._forward_hooks and not head._forward_pre_hooks
            and not hasattr(head, "_hf_hook"))


def chunked_head_logprobs(head: torch.nn.Linear, hidden: torch.Tensor, targets: torch.Tensor, *,
                          temperature: float = 1.0, softcap: float | None = None, with_entropy: bool = False,
                          rows: int | None = None, cols: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) (N,) and entropy (N,) (zeros unless ``with_entropy``) of ``head(hidden)`` rows.

    hidden: (N, H) hidden states that predict ``targets`` (N,). At most ``rows`` × ``cols`` logits exist at
    once (default :func:`tile_shape`).
    """
    auto_rows, auto_cols = tile_shape(hidden.shape[0], head.weight.shape[0])
    return _ChunkedHeadLogprobs.apply(hidden, head.weight, head.bias, targets, float(temperature),
                                      softcap or None, int(rows or auto_rows), int(cols or auto_cols),
                                      bool(with_entropy))
