"""How rollouts are generated: every sampling knob declared once, with what it does."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from vlalign.config import BaseConfig


class RolloutConfig(BaseConfig):
    """Sampling settings of the RL path. ``num_samples`` = K responses per prompt (the GRPO/RLOO group)."""

    backend: Literal["hf", "vllm"] = Field(
        "hf", description="hf = model.generate with KV cache; vllm = colocated vllm.LLM (CUDA + vllm installed)"
    )
    vllm_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra vllm.LLM arguments, e.g. {gpu_memory_utilization: 0.3}"
    )
    num_samples: int = Field(4, ge=1, description="K responses per prompt; GRPO/RLOO need K ≥ 2")
    prefill: Literal["auto", "per_sample"] = Field(
        "auto",
        description="hf backend: auto = run each prompt + image once and expand its KV cache to the K samples "
        "(families with plain positions: llava, idefics3; others fall back); per_sample = prefill all B*K rows",
    )
    sampling_seed: Literal["process", "prompt"] = Field(
        "process",
        description="RNG stream of the samples: process = one stream per (seed, rollout, process), all of the "
        "process's prompts sampled in one batched generate call; prompt = one stream per (seed, rollout, prompt "
        "row), one generate call per prompt (slower), so a prompt's samples do not depend on the process count "
        "or on the other prompts of the batch (a 2-process run then samples exactly what 1 process does)",
    )
    max_new_tokens: int = Field(32, ge=1)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k filtering")
    stop_strings: list[str] = Field(default_factory=list, description="end a response at any of these strings")
    repetition_penalty: float = Field(1.0, gt=0)
