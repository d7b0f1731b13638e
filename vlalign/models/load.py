"""Load any Hugging Face image-text-to-text model + processor, optionally with LoRA / QLoRA.

WHY one loader: every trainer, reward model and evaluator gets its model from here, so "supported
model" means exactly "``AutoModelForImageTextToText`` can load it, it has a processor with an image
processor, and it has a chat template" — and anything else fails here, early, with a message that
says what is missing and what to do, instead of deep inside a training step.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, field_validator

from vlalign.config import BaseConfig


class ModelLoadError(ValueError):
    """The model or its processor cannot be used; the message says what is missing and the fix."""


class LoraSettings(BaseConfig):
    """LoRA adapter on the language model (the vision tower stays frozen unless listed explicitly)."""

    enabled: bool = False
    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # "all-linear" = every nn.Linear of the LANGUAGE model except the output head. A list of names
    # (e.g. [q_proj, v_proj]) is also restricted to the language model.
    target_modules: str | list[str] = "all-linear"
    # Full-trained (not adapted) modules, e.g. [lm_head] or [multi_modal_projector].
    modules_to_save: list[str] = Field(default_factory=list)


class ModelConfig(BaseConfig):
    """Which model to load and how; embedded by every trainer config as ``model:``."""

    name_or_path: str = Field(..., description="hub id (e.g. llava-hf/llava-1.5-7b-hf) or local directory")
    dtype: Literal["float32", "bfloat16", "float16", "auto"] = "float32"
    attn_implementation: str | None = Field(None, description="eager | sdpa | flash_attention_2; None = default")
    gradient_checkpointing: bool = False
    max_pixels: int | None = Field(None, ge=1, description="cap on pixels per image (dynamic-resolution processors)")
    lora: LoraSettings = Field(default_factory=LoraSettings)
    load_in_4bit: bool = False
    trust_remote_code: bool = False
    chat_template: str | None = Field(None, description="Jinja chat template to use when the processor has none")
    revision: str | None = None
    freeze: list[str] = Field(
        default_factory=list,
        description="parts kept fixed during training: vision_tower | projector | language_model (vlalign.models.freeze)",
    )

    lr_scale: dict[str, float] = Field(
        default_factory=dict,
        description="parts trained at this multiple of learning_rate, e.g. {vision_tower: 0.1}: a tower updated at the "
        "language model's rate mostly loses what it learned (vlalign.models.freeze); a part also in freeze stays fixed",
    )

    @field_validator("freeze", "lr_scale")
    @classmethod
    def _known_parts(cls, v: Any) -> Any:
        from vlalign.models.freeze import MODEL_PARTS

        for part in v:
            try:
                MODEL_PARTS.get(part)
            except KeyError as exc:  # pydantic reports ValueErrors with the field's location
                raise ValueError(exc.args[0]) from None
        if isinstance(v, dict) and any(not (x > 0) for x in v.values()):
            raise ValueError(f"lr_scale factors must be > 0 (to keep a part fixed, list it in model.freeze); got {v}")
        return v


@dataclass
class LoadedModel:
    model: Any  # PreTrainedModel or peft.PeftModel
    processor: Any  # ProcessorMixin with .tokenizer and .image_processor
    family: str  # config.model_type, e.g. "llava", "qwen2_vl", "idefics3", "paligemma"


_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def _torch_dtype(name: str) -> Any:
    import torch

    return "auto" if name == "auto" else getattr(torch, _DTYPES[name])


def _check_is_vlm(cfg: ModelConfig) -> Any:
    """Load the config and make sure the architecture is image-text-to-text."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    try:
        hf_config = AutoConfig.from_pretrained(
            cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
    except (OSError, ValueError) as exc:
        raise ModelLoadError(
            f"cannot read a model config from {cfg.name_or_path!r}: {exc}\n"
            "fix: pass a local directory holding config.json (e.g. one made by `vlalign tiny-model`) "
            "or a hub id; offline (HF_HUB_OFFLINE=1) a hub id must already be in the local cache."
        ) from exc
    model_type = getattr(hf_config, "model_type", None)
    if model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES and not cfg.trust_remote_code:
        raise ModelLoadError(
            f"{cfg.name_or_path!r} has model_type {model_type!r}, which is not an image-text-to-text "
            "(vision-language) architecture, so it cannot read images.\n"
            "fix: use a VLM checkpoint (e.g. llava, qwen2_vl, idefics3, paligemma; "
            "`vlalign tiny-model --family llava --out DIR` builds a small one), or set "
            "model.trust_remote_code=true for a custom VLM."
        )
    return hf_config


def _size_dict(image_processor: Any) -> dict[str, int]:
    """``image_processor.size`` as a plain dict without unset fields (it may be a dict or a SizeDict)."""
    size = getattr(image_processor, "size", None)
    if size is None:
        return {}
    items = size.items() if isinstance(size, dict) else vars(size).items()
    return {k: v for k, v in items if v is not None}


def _uses_pixel_budget(image_processor: Any) -> bool:
    """Dynamic-resolution processors (Qwen2-VL family): ``size`` holds pixel COUNTS, not edge lengths."""
    return hasattr(image_processor, "merge_size") or hasattr(image_processor, "max_pixels")


def apply_max_pixels(processor: Any, max_pixels: int | None) -> None:
    """Cap image resolution so that large images cannot blow up the number of image tokens.

    Dynamic-resolution processors (Qwen2-VL) take a pixel budget; processors that resize to a
    longest edge (Idefics3) get that edge capped at sqrt(max_pixels); fixed-size processors (CLIP,
    SigLIP) already resize every image to one size and need nothing.
    """
    if max_pixels is None:
        return
    ip = processor.image_processor
    size = _size_dict(ip)
    if _uses_pixel_budget(ip):
        size["longest_edge"] = min(size.get("longest_edge", max_pixels), max_pixels)
        size["shortest_edge"] = min(size.get("shortest_edge", max_pixels), size["longest_edge"])
        ip.size = size
        if hasattr(ip, "max_pixels"):
            ip.max_pixels = size["longest_edge"]
    elif "longest_edge" in size:
        size["longest_edge"] = min(size["longest_edge"], math.isqrt(max_pixels))
        ip.size = size


def load_processor(cfg: ModelConfig) -> Any:
    """Load the processor and check that it can turn (images, chat) into model inputs."""
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(
            cfg.name_or_path, trust_remote_code=cfg.trust_remote_code, revision=cfg.revision
        )
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"cannot load a processor from {cfg.name_or_path!r}: {exc}\n"
            "fix: the directory needs processor files (preprocessor_config.json, tokenizer files); "
            "save them with processor.save_pretrained(DIR)."
        ) from exc
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise ModelLoadError(
            f"{cfg.name_or_path!r} has a {type(processor).__name__} but no image processor + tokenizer pair, "
            "so images cannot be turned into model inputs.\n"
            "fix: save the model's multimodal processor (AutoProcessor) into the directory."
        )
    if cfg.chat_template:
        processor.chat_template = cfg.chat_template
    if not (getattr(processor, "chat_template", None) or getattr(processor.tokenizer, "chat_template", None)):
        raise ModelLoadError(
            f"{cfg.name_or_path!r} has no chat template, so prompts cannot be formatted.\n"
            "fix: set model.chat_template to a Jinja template (see the family's model card) or use the "
            "instruction-tuned checkpoint, which ships one."
        )
    if getattr(processor, "chat_template", None) is None:
        processor.chat_template = processor.tokenizer.chat_template
    if processor.tokenizer.pad_token_id is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    apply_max_pixels(processor, cfg.max_pixels)
    return processor


def _quantization_config(cfg: ModelConfig) -> Any:
    import importlib.util

    import torch

    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise ModelLoadError(
            "model.load_in_4bit=true (QLoRA) needs the bitsandbytes package and a CUDA GPU "
            f"(bitsandbytes installed: {importlib.util.find_spec('bitsandbytes') is not None}, "
            f"CUDA available: {torch.cuda.is_available()}).\n"
            "fix: `pip install bitsandbytes` on a CUDA machine, or set model.load_in_4bit=false "
            "(LoRA without quantization works everywhere)."
        )
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def language_model_prefix(model: Any) -> str:
    """Dotted module name of the decoder (language model) inside a VLM, e.g. ``model.language_model``."""
    decoder = model.get_decoder()
    for name, module in model.named_modules():
        if module is decoder:
            return name
    raise ModelLoadError(f"cannot locate the language model inside {type(model).__name__}")


def lora_target_names(model: Any, target_modules: str | list[str]) -> list[str]:
    """Full names of the language model's nn.Linear modules that LoRA should adapt.

    Restricting to the language model keeps the vision tower frozen (the usual VLM recipe) and
    never adapts the output head.
    """
    import torch

    prefix = language_model_prefix(model) + "."
    wanted = None if target_modules == "all-linear" else (
        [target_modules] if isinstance(target_modules, str) else list(target_modules)
    )
    names = []
    for name, module in model.named_modules():
        if not name.startswith(prefix) or not isinstance(module, torch.nn.Linear):
            continue
        if wanted is None or any(name == w or name.endswith("." + w) for w in wanted):
            names.append(name)
    if not names:
        raise ModelLoadError(
            f"lora.target_modules={target_modules!r} matches no nn.Linear in the language model "
            f"({prefix[:-1]}); fix: use 'all-linear' or names such as q_proj, v_proj."
        )
    return names


def apply_lora(model: Any, lora: LoraSettings) -> Any:
    from peft import LoraConfig, get_peft_model

    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora_target_names(model, lora.target_modules),
        modules_to_save=lora.modules_to_save or None,
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_cfg)


def load_model(cfg: ModelConfig) -> LoadedModel:
    """Load model + processor from a hub id or a local directory; apply LoRA/QLoRA if asked."""
    from transformers import AutoModelForImageTextToText

    hf_config = _check_is_vlm(cfg)
    processor = load_processor(cfg)
    kwargs: dict[str, Any] = {"dtype": _torch_dtype(cfg.dtype), "trust_remote_code": cfg.trust_remote_code}
    if cfg.revision:
        kwargs["revision"] = cfg.revision
    if cfg.attn_implementation:
        kwargs["attn_implementation"] = cfg.attn_implementation
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = _quantization_config(cfg)
        kwargs["device_map"] = {"": 0}
    model = AutoModelForImageTextToText.from_pretrained(cfg.name_or_path, **kwargs)
    if cfg.freeze:
        from vlalign.models.freeze import freeze_parts

        freeze_parts(model, cfg.freeze)
    if cfg.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    elif cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.lora.enabled:
            model.enable_input_require_grads()  # so checkpointed blocks see a grad-requiring input
    if cfg.lora.enabled:
        model = apply_lora(model, cfg.lora)
    elif cfg.load_in_4bit:
        raise ModelLoadError("model.load_in_4bit=true needs model.lora.enabled=true (4-bit weights cannot be trained)")
    return LoadedModel(model=model, processor=processor, family=hf_config.model_type)


@contextlib.contextmanager
def disable_adapter(model: Any) -> Iterator[Any]:
    """Run the base model with LoRA switched off: the reference policy for free.

    A model without an adapter has no reference inside it; that is an error (load a separate
    reference model) rather than silently returning the policy's own log-probs.
    """
    from peft import PeftModel

    if not isinstance(model, PeftModel):
        raise TypeError(
            "disable_adapter needs a LoRA (peft) model; for full fine-tuning load a separate frozen "
            "reference model or precompute reference log-probs"
        )
    with model.disable_adapter():
        yield model


def trainable_parameter_count(model: Any) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
