"""response_logprobs: equals the naive full-logits computation, masks exactly, and trains."""

from __future__ import annotations

import math

import pytest
import torch

from vlalign.models.chat import build_prompt, response_suffix
from vlalign.models.logprobs import response_logprobs, response_logprobs_naive, token_logprobs_and_entropy
from vlalign.models.tiny import ARCHITECTURES


def test_token_logprobs_and_entropy_by_hand():
    # logits [0, ln 3] -> probs [1/4, 3/4]; target 1 -> log(3/4) = -0.28768
    # entropy = -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.25*1.386294 + 0.75*0.287682 = 0.562335
    logits = torch.tensor([[0.0, math.log(3.0)]])
    logp, ent = token_logprobs_and_entropy(logits, torch.tensor([1]))
    assert logp.item() == pytest.approx(math.log(0.75), abs=1e-6)
    assert ent.item() == pytest.approx(0.562335, abs=1e-6)


def _batch(processor, responses):
    from PIL import Image

    prompt = build_prompt(processor, "Describe the image.", 1)
    suffix = response_suffix(processor)
    tok = processor.tokenizer
    texts = [prompt + r + suffix for r in responses]
    images = [[Image.new("RGB", (64, 64), (255 * (i % 2), 80, 40))] for i in range(len(texts))]
    tok.padding_side = "right"
    enc = processor(images=images, text=texts, return_tensors="pt", padding=True)
    prompt_len = len(processor(images=images[0], text=[prompt], return_tensors="pt")["input_ids"][0])
    mask = torch.zeros_like(enc["input_ids"], dtype=torch.bool)  # (B, T)
    mask[:, prompt_len:] = True
    mask &= enc["attention_mask"].bool()
    return dict(enc), mask


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_matches_naive_full_logits(family, tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = tiny_model_dir(family)
    model = AutoModelForImageTextToText.from_pretrained(d).eval()
    processor = AutoProcessor.from_pretrained(d)
    inputs, mask = _batch(processor, ["There is a red circle.", "Yes"])
    with torch.no_grad():
        logps, fmask, ent = response_logprobs(model, inputs, mask, return_entropy=True)
        naive = response_logprobs_naive(model, inputs, mask)
    torch.testing.assert_close(logps, naive, atol=1e-5, rtol=1e-5)
    assert torch.equal(fmask, mask.float())
    # zeros exactly where masked; strictly negative log-probs and positive entropy on the response
    assert (logps[~mask] == 0).all() and (ent[~mask] == 0).all()
    assert (logps[mask] < 0).all() and (ent[mask] > 0).all()
    # the two rows have different response lengths: the short one's padding is masked out
    assert fmask[0].sum() > fmask[1].sum() > 0


def test_rejects_bad_masks(tiny_model_dir):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir("llava"))
    ids = torch.tensor([[5, 6, 7]])
    with pytest.raises(ValueError, match="first token"):
        response_logprobs(model, {"input_ids": ids}, torch.tensor([[True, True, False]]))
    with pytest.raises(ValueError, match="shape"):
        response_logprobs(model, {"input_ids": ids}, torch.tensor([[False, True]]))


def test_gradient_step_raises_response_logprob(tiny_model_dir, learning):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = tiny_model_dir("llava")
    torch.manual_seed(learning.seed)
    model = AutoModelForImageTextToText.from_pretrained(d)
    processor = AutoProcessor.from_pretrained(d)
    inputs, mask = _batch(processor, ["There is a red circle."])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = response_logprobs(model, inputs, mask)[0].sum().item()
    for _ in range(5):
        loss = -response_logprobs(model, inputs, mask)[0].sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = response_logprobs(model, inputs, mask)[0].sum().item()
    # 26.42 on every seed 0-4 and kernel AVX2 / default (nothing random: saved weights, fixed batch)
    assert learning.above("log-prob gain", after - before, 1.0), (before, after)


# ---------------------------------------------------------------- chunked output layer (chunked_head.py)


def test_chunked_head_gradcheck_float64():
    """The hand-written backward equals finite differences: bias, soft-capping, temperature, entropy,
    and tiles that divide neither the rows nor the vocabulary (7 rows in chunks of 3, 11 words in 4s)."""
    from vlalign.models.chunked_head import _ChunkedHeadLogprobs, chunked_head_logprobs

    torch.manual_seed(0)
    head = torch.nn.Linear(5, 11, bias=True).double()
    hidden = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 11, (7,))

    w = head.weight.detach().clone().requires_grad_(True)
    b = head.bias.detach().clone().requires_grad_(True)
    # gradcheck needs a function of (h, w, b) itself: call the autograd Function directly
    assert torch.autograd.gradcheck(
        lambda h, w, b: _ChunkedHeadLogprobs.apply(h, w, b, targets, 0.7, 3.0, 3, 4, True), (hidden, w, b))
    assert torch.autograd.gradcheck(  # entropy off, no cap, no temperature: the DPO path
        lambda h, w: _ChunkedHeadLogprobs.apply(h, w, None, targets, 1.0, None, 2, 5, False)[0], (hidden, w))
    with torch.no_grad():
        head.weight.copy_(w), head.bias.copy_(b)
    logp, ent = chunked_head_logprobs(head, hidden, targets, temperature=0.7, softcap=3.0, with_entropy=True,
                                      rows=3, cols=4)
    # the forward values against the plain formula
    z = torch.tanh((hidden @ w.t() + b) / 3.0) * 3.0 / 0.7
    ref = torch.log_softmax(z, -1)
    torch.testing.assert_close(logp, ref.gather(-1, targets[:, None])[:, 0])
    torch.testing.assert_close(ent, -(ref.exp() * ref).sum(-1))


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_chunked_head_matches_full_logits_with_gradients(family, tiny_model_dir):
    """response_logprobs (chunked output layer: 2-token chunks, 100-word vocabulary tiles) against full
    (B, T, V) logits: log-probs, entropies and every parameter's gradient of a loss using both, to 1e-5."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    import vlalign.models.chunked_head as chunked

    d = tiny_model_dir(family)
    processor = AutoProcessor.from_pretrained(d)
    inputs, mask = _batch(processor, ["There is a red circle.", "Yes"])
    temperature = 0.7

    def grads(model):
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    torch.manual_seed(0)
    fast = AutoModelForImageTextToText.from_pretrained(d)
    old = chunked.ROWS, chunked.TILE_ELEMENTS
    chunked.ROWS, chunked.TILE_ELEMENTS = 2, 200  # 2 tokens × 100 words per tile: many tiles on this batch
    try:
        logps, _, ent = response_logprobs(fast, inputs, mask, return_entropy=True, temperature=temperature)
    finally:
        chunked.ROWS, chunked.TILE_ELEMENTS = old
    w = torch.linspace(0.5, 1.5, logps.numel()).view_as(logps)  # weights so every token's gradient differs
    ((logps * w).sum() + 0.3 * (ent * w).sum()).backward()

    slow = AutoModelForImageTextToText.from_pretrained(d)
    logits = slow(**inputs, use_cache=False).logits.float()[:, :-1] / temperature  # (B, T-1, V)
    logp_all = torch.log_softmax(logits, -1)
    tok = logp_all.gather(-1, inputs["input_ids"][:, 1:, None])[..., 0] * mask[:, 1:]  # (B, T-1)
    ent_ref = -(logp_all.exp() * logp_all).sum(-1) * mask[:, 1:]
    ((tok * w[:, 1:]).sum() + 0.3 * (ent_ref * w[:, 1:]).sum()).backward()

    torch.testing.assert_close(logps[:, 1:], tok, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ent[:, 1:], ent_ref, atol=1e-5, rtol=1e-5)
    g_fast, g_slow = grads(fast), grads(slow)
    assert g_fast.keys() == g_slow.keys() and len(g_fast) > 10
    for name in g_slow:
        torch.testing.assert_close(g_fast[name], g_slow[name], atol=1e-5, rtol=1e-4, msg=name)
