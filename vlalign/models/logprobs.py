"""Per-token log-probabilities of response tokens, without materialising (B, T, vocab) logits.

WHY: in preference and RL training only the response tokens are scored, and in VLM data the prompt
(image tokens included) is most of the sequence. Full logits cost B*T*V floats (and as much again for
their log-softmax and its gradient); projecting only the hidden states that predict a response token
cuts that to N*V with N = number of response tokens, and the chunked output layer
(:mod:`vlalign.models.chunked_head`) keeps only one chunk of those N*V at a time, backward included. Everything a trainer needs (policy, reference,
old policy, entropy for RL) goes through this one function, so the masking rule lives in one place:

    logps[b, t] = log p(input_ids[b, t] | input_ids[b, :t])   where response_mask[b, t]
    logps[b, t] = 0                                             elsewhere
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from vlalign.models.chunked_head import chunked_head_logprobs, plain_linear_head


def unwrap_model(model: Any) -> Any:
    """The transformers model inside DDP/FSDP/accelerate wrappers (peft models delegate themselves)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return model


def _softcap(model: Any) -> float | None:
    """Final logit soft-capping (Gemma-2 based models); None when the model has none."""
    config = unwrap_model(model).config
    text_config = getattr(config, "text_config", None) or config
    return getattr(text_config, "final_logit_softcapping", None) or getattr(config, "final_logit_softcapping", None)


def project_logits(model: Any, hidden: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Apply the model's output head (+ soft-capping, / temperature) to selected hidden states.

    hidden: (N, H) -> logits (N, V) in float32 (log-softmax in bf16 loses too much precision).
    """
    lm_head = unwrap_model(model).get_output_embeddings()
    logits = lm_head(hidden).float()  # (N, V)
    cap = _softcap(model)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits / temperature


def last_hidden_states(model: Any, inputs: dict[str, Any]) -> torch.Tensor:
    """Decoder output (after the final norm) for every position: (B, T, H).

    The full model is called (so DDP/peft wrappers and the family's own image handling run) with
    ``logits_to_keep=1``: the head is applied to one position only, and the last entry of
    ``hidden_states`` is the normed ``last_hidden_state`` (transformers' default).
    """
    out = model(**inputs, logits_to_keep=1, output_hidden_states=True, use_cache=False)
    return out.hidden_states[-1]


def token_logprobs_and_entropy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (N, V), targets (N,) -> (log p(target) (N,), entropy of the distribution (N,))."""
    logp_all = F.log_softmax(logits, dim=-1)  # (N, V)
    token_logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # (N,)
    return token_logp, entropy


def head_logprobs(model: Any, hidden: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                  with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) (N,) and entropy (N,) of the output layer applied to ``hidden`` (N, H).

    A plain ``nn.Linear`` head goes through :func:`vlalign.models.chunked_head.chunked_head_logprobs`
    (never more than one chunk of logits in memory, forward or backward); any other head (LoRA on the
    head, quantised, hooked) through the full (N, V) logits. Entropy is zeros unless ``with_entropy``.
    """
    head = unwrap_model(model).get_output_embeddings()
    if plain_linear_head(head):
        return chunked_head_logprobs(head, hidden, targets, temperature=temperature, softcap=_softcap(model),
                                     with_entropy=with_entropy)
    token_logp, entropy = token_logprobs_and_entropy(project_logits(model, hidden, temperature), targets)
    return token_logp, entropy if with_entropy else torch.zeros_like(entropy)


def _check_mask(input_ids: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    if response_mask.shape != input_ids.shape:
        raise ValueError(f"response_mask shape {tuple(response_mask.shape)} != input_ids shape {tuple(input_ids.shape)}")
    mask = response_mask.bool()
    if mask[:, 0].any():
        raise ValueError("response_mask[:, 0] is True, but nothing precedes the first token to predict it")
    return mask


def scatter_tokens(values: torch.Tensor, predicts: torch.Tensor) -> torch.Tensor:
    """Per-predicted-token values (M,) back onto the (N, T) token grid, float32, zero elsewhere.

    ``predicts`` (N, T-1) marks the positions t-1 whose hidden state predicted token t (the response
    mask shifted by one), so value m lands on token t; position 0 is never predicted.
    """
    grid = values.new_zeros(predicts.shape[0], predicts.shape[1] + 1, dtype=torch.float32)  # (N, T)
    grid[:, 1:] = grid[:, 1:].masked_scatter(predicts, values.float())
    return grid


def response_logprobs(
    model: Any,
    inputs: dict[str, Any],
    response_mask: torch.Tensor,
    *,
    return_entropy: bool = False,
    temperature: float = 1.0,
    return_hidden: bool = False,
) -> tuple[torch.Tensor, ...]:
    """Log-probs of the response tokens only.

    Args:
        inputs: processor output (input_ids, attention_mask, pixel_values, image_grid_thw, ...).
        response_mask: (B, T) bool, True at the response tokens to score.
        temperature: divide logits by it (use the sampling temperature in RL).
    Returns:
        ``(logps, mask)`` — logps (B, T) float32 with zeros where masked, mask (B, T) float32;
        with ``return_entropy=True`` also entropy (B, T) (zeros where masked); with
        ``return_hidden=True`` also the decoder's last hidden states (B, T, H), so a value head on
        the policy (PPO's shared critic) needs no second forward.
    """
    input_ids = inputs["input_ids"]  # (B, T)
    mask = _check_mask(input_ids, response_mask)  # (B, T)
    hidden = last_hidden_states(model, inputs)  # (B, T, H)
    predicts = mask[:, 1:]  # (B, T-1): hidden state at t-1 predicts token t
    selected = hidden[:, :-1][predicts]  # (N, H)
    targets = input_ids[:, 1:][predicts]  # (N,)
    token_logp, entropy = head_logprobs(model, selected, targets, temperature, return_entropy)  # (N,), (N,)

    out: tuple[torch.Tensor, ...] = (scatter_tokens(token_logp, predicts), mask.float())
    if return_entropy:
        out = (*out, scatter_tokens(entropy, predicts))
    if return_hidden:
        out = (*out, hidden)
    return out


def response_logprobs_naive(model: Any, inputs: dict[str, Any], response_mask: torch.Tensor) -> torch.Tensor:
    """Reference implementation through the full (B, T, V) logits; for tests and debugging only."""
    mask = _check_mask(inputs["input_ids"], response_mask)
    logits = model(**inputs, use_cache=False).logits.float()  # (B, T, V), soft-capped by the model itself
    logp_all = F.log_softmax(logits[:, :-1], dim=-1)  # (B, T-1, V)
    token = logp_all.gather(-1, inputs["input_ids"][:, 1:].unsqueeze(-1)).squeeze(-1)  # (B, T-1)
    logps = torch.zeros_like(mask, dtype=torch.float32)
    logps[:, 1:] = token * mask[:, 1:]
    return logps
