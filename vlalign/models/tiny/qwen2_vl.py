"""Tiny Qwen2-VL: dynamic-resolution ViT (patch merging) + Qwen2 decoder with M-RoPE, ChatML chat."""

from __future__ import annotations

from vlalign.models.tiny.core import TINY_FAMILIES, SizeSpec, finish_model
from vlalign.models.tiny.tokenizer import build_hf_tokenizer

# ChatML as in Qwen2-VL-Instruct. Newlines right after a tag are written as {{ '\n' }} because
# transformers renders with trim_blocks=True.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'video' %}{{ '<|vision_start|><|video_pad|><|vision_end|>' }}"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies over (time, height, width), like Qwen2-VL's [16, 24, 24]."""
    half = head_dim // 2
    t = half // 4
    h = (half - t) // 2
    return [t, h, half - t - h]


@TINY_FAMILIES.register("qwen2_vl")
def build_qwen2_vl(size: SizeSpec, seed: int):
    """Qwen2VLForConditionalGeneration; a 64x64 image -> (64/8)^2 = 64 patches -> 64/2^2 = 16 tokens
    (bench sizes: patch 14, max_pixels 448² -> a 448x448 image gives 1024 patches -> 256 tokens, as the
    real Qwen2-VL processor does)."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    special = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    tokenizer = build_hf_tokenizer(size.vocab_size, special, CHAT_TOKENS, QWEN2_VL_CHAT_TEMPLATE)
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in CHAT_TOKENS}
    merge = 2
    head_dim = size.text_hidden // size.text_heads
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": size.model_vocab(len(tokenizer)),
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_intermediate,
            "num_hidden_layers": size.text_layers,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.kv_heads,
            "max_position_embeddings": 2048,
            "max_window_layers": size.text_layers,
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope_section(head_dim)},
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": None,
        },
        vision_config={
            "depth": size.vision_layers,
            "embed_dim": size.vision_hidden,
            "hidden_size": size.text_hidden,  # output of the patch merger = text width
            "num_heads": size.vision_heads,
            "mlp_ratio": size.vision_intermediate // size.vision_hidden,
            "patch_size": size.patch_size,
            "spatial_merge_size": merge,
            "temporal_patch_size": 2,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )
    model = finish_model(Qwen2VLForConditionalGeneration(config), tokenizer)

    factor = size.patch_size * merge  # images are resized to multiples of this
    pixel_kwargs = {
        "size": {"shortest_edge": factor * factor, "longest_edge": size.image_size * size.image_size},
        "patch_size": size.patch_size,
        "temporal_patch_size": 2,
        "merge_size": merge,
    }
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(**pixel_kwargs),
        video_processor=Qwen2VLVideoProcessor(**pixel_kwargs),
        tokenizer=tokenizer,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
    return model, processor
