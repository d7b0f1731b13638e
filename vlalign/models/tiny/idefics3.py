"""Tiny Idefics3 (the SmolVLM architecture): SigLIP-style ViT + pixel-shuffle connector + Llama."""

from __future__ import annotations

from vlalign.models.tiny.core import TINY_FAMILIES, SizeSpec, finish_model
from vlalign.models.tiny.tokenizer import build_hf_tokenizer

# "User:<image>text<end_of_utterance>\nAssistant:" as in Idefics3/SmolVLM; the processor expands
# <image> into <fake_token_around_image><global-img><image>*N<fake_token_around_image>.
IDEFICS3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ message['role'] | capitalize }}{{ ':' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}{{ '<image>' }}{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<end_of_utterance>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"]


@TINY_FAMILIES.register("idefics3", "smolvlm")
def build_idefics3(size: SizeSpec, seed: int):
    """Idefics3ForConditionalGeneration, no image splitting: 64x64 -> 64 patches -> 64/2^2 = 16 tokens."""
    from transformers import (
        Idefics3Config,
        Idefics3ForConditionalGeneration,
        Idefics3ImageProcessorPil,
        Idefics3Processor,
    )

    special = {
        "bos_token": "<|begin_of_text|>",
        "eos_token": "<end_of_utterance>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
    }
    tokenizer = build_hf_tokenizer(size.vocab_size, special, IMAGE_TOKENS, IDEFICS3_CHAT_TEMPLATE)
    scale_factor = 2
    image_seq_len = (size.image_size // size.patch_size) ** 2 // scale_factor**2
    config = Idefics3Config(
        vision_config={
            "hidden_size": size.vision_hidden,
            "intermediate_size": size.vision_intermediate,
            "num_hidden_layers": size.vision_layers,
            "num_attention_heads": size.vision_heads,
            "image_size": size.image_size,
            "patch_size": size.patch_size,
        },
        text_config={
            "model_type": "llama",
            "vocab_size": size.model_vocab(len(tokenizer)),
            "hidden_size": size.text_hidden,
            "intermediate_size": size.text_intermediate,
            "num_hidden_layers": size.text_layers,
            "num_attention_heads": size.text_heads,
            "num_key_value_heads": size.kv_heads,
            "max_position_embeddings": 2048,
            "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "tie_word_embeddings": False,
        },
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        scale_factor=scale_factor,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    model = finish_model(Idefics3ForConditionalGeneration(config), tokenizer)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": size.image_size},
        max_image_size={"longest_edge": size.image_size},
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=image_seq_len,
        chat_template=IDEFICS3_CHAT_TEMPLATE,
    )
    return model, processor
