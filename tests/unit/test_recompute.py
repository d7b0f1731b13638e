"""Vision-tower recomputation (vlalign.models.recompute): same gradients, fewer kept activations."""

from __future__ import annotations

import pytest
import torch

from vlalign.models.logprobs import response_logprobs
from vlalign.models.recompute import recompute_vision_tower, vision_tower
from vlalign.models.tiny import ARCHITECTURES


def _inputs(processor):
    from PIL import Image

    from vlalign.models.chat import build_prompt, response_suffix

    prompt = build_prompt(processor, "Describe the image.", 1)
    text = prompt + "There is a red circle." + response_suffix(processor)
    images = [[Image.new("RGB", (64, 64), (200, 30, 30))], [Image.new("RGB", (64, 64), (30, 30, 200))]]
    enc = dict(processor(images=images, text=[text, text], return_tensors="pt"))
    prompt_len = len(processor(images=images[0], text=[prompt], return_tensors="pt")["input_ids"][0])
    mask = torch.zeros_like(enc["input_ids"], dtype=torch.bool)
    mask[:, prompt_len:] = True
    return enc, mask


def _grads_and_saved_bytes(model, inputs, mask):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logps, _ = response_logprobs(model, inputs, mask)
    logps.sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}, sum(saved)


@pytest.mark.parametrize("family", ARCHITECTURES)
def test_recomputed_vision_tower_gives_the_same_gradients_and_keeps_less(family, tiny_model_dir):
    from transformers import AutoModelForImageTextToText, AutoProcessor

    d = tiny_model_dir(family)
    processor = AutoProcessor.from_pretrained(d)
    inputs, mask = _inputs(processor)
    plain = AutoModelForImageTextToText.from_pretrained(d).train()
    lean = AutoModelForImageTextToText.from_pretrained(d).train()
    recompute_vision_tower(lean)
    g_plain, bytes_plain = _grads_and_saved_bytes(plain, inputs, mask)
    g_lean, bytes_lean = _grads_and_saved_bytes(lean, inputs, mask)

    tower = {n for n, _ in vision_tower(plain).named_parameters()}
    assert tower and any(n.endswith(t) for n in g_plain for t in tower)  # the tower is trained
    assert g_plain.keys() == g_lean.keys()
    for name in g_plain:
        torch.testing.assert_close(g_lean[name], g_plain[name], atol=1e-5, rtol=1e-4, msg=name)
    # only each tower block's input stays saved: the tiny towers (2 blocks) keep far less
    assert bytes_lean < 0.8 * bytes_plain, (bytes_lean, bytes_plain)
