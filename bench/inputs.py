"""The benchmark's model and rows, built once per work folder and shared by every side.

- Model: ``vlalign.models.tiny.build_tiny(family, ..., size)`` (``small``: the 30M LLaVA of the first
  benchmarks; ``bench-mini`` / ``bench-vocab``: real shapes, see bench/model_shapes.py).
- Rows: Shapes scenes (``generate_shapes``) drawn at the resolution the real processor turns into its
  real number of image tokens (Qwen2-VL 448 × 448 → 256 tokens; LLaVA 336 → 576). For the real-shape
  sizes the text is lengthened to the token composition of real VLM preference data: the prompt gets a
  context paragraph (Qwen2-VL: 300–600 prompt tokens in all; LLaVA: 576 image + 32–128 text tokens) and
  each answer continues the Shapes caption to 64–256 tokens (both drawn uniformly, seeded). The filler is
  sentences of the tiny tokenizer's own corpus, so every word is a handful of tokens, never bytes.
- Token counts of every row, measured with vlalign's own encoder (chat template, image tokens, end-of-turn
  suffix): the FLOP formulas (bench/flops.py) read them.

This module is imported by the parent process only (it needs torch and transformers).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import read_rows, safetensors_param_count


@dataclass(frozen=True)
class Composition:
    """Token ranges of a benchmark row (inclusive, drawn uniformly); None = the Shapes text as it is."""

    image_px: int
    prompt_text: tuple[int, int] | None = None  # text tokens of the prompt (template and image tokens apart)
    prompt_total: tuple[int, int] | None = None  # or: all prompt tokens, image tokens included
    response: tuple[int, int] | None = None


SHAPES_ONLY = Composition(image_px=64)
REAL = {
    "qwen2_vl": Composition(image_px=448, prompt_total=(300, 600), response=(64, 256)),
    "llava": Composition(image_px=336, prompt_text=(32, 128), response=(64, 256)),
}


# The real checkpoint's dimensions, random weights in bf16, from the public config (GPU benchmark only).
FROM_CONFIG = {"qwen2-vl-2b": ("qwen2_vl", Path(__file__).resolve().parent / "configs" / "qwen2_vl_2b.json")}
REAL_SHAPE_SIZES = ("bench-mini", "bench-vocab", *FROM_CONFIG)


def composition(family: str, size: str) -> Composition:
    return REAL[family] if size in REAL_SHAPE_SIZES else SHAPES_ONLY


def build_model(workdir: Path, family: str, size: str) -> Path:
    model_dir = workdir / f"{size}_{family}"
    if not (model_dir / "config.json").exists():
        from vlalign.models.tiny import build_tiny, spec_from_config

        if size in FROM_CONFIG:
            config_family, path = FROM_CONFIG[size]
            if family != config_family:
                raise ValueError(f"--model {size} is a {config_family} model, not {family}")
            build_tiny(family, model_dir, spec=spec_from_config(json.loads(path.read_text())), dtype="bfloat16")
        else:
            build_tiny(family, model_dir, size=size)
    return model_dir


def shapes_rows(workdir: Path, rows: int, image_px: int) -> list[dict[str, Any]]:
    """The first ``rows`` Shapes preference rows at ``image_px`` pixels (generated once per size)."""
    shapes = workdir / f"shapes_{image_px}px"
    pref = shapes / "preference.jsonl"
    have = len(pref.read_text().splitlines()) if pref.exists() else 0
    if have < rows:
        from vlalign.data.shapes.generate import ShapesConfig, generate_shapes

        generate_shapes(shapes, ShapesConfig(seed=0, n_train=max(rows, 100), n_eval=10, image_size=image_px))
    return [{**r, "images": [str(shapes / p) for p in r["images"]]} for r in read_rows(pref, rows)]


class Filler:
    """Exactly-n-token English filler, cut from one long seeded stream of the tokenizer's corpus."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        from vlalign.models.tiny.tokenizer import corpus_lines

        lines = [line for line in corpus_lines() if line.endswith((".", "?"))]
        random.Random(seed).shuffle(lines)
        self.tokenizer = tokenizer
        self.ids = tokenizer(" ".join(lines * 4), add_special_tokens=False)["input_ids"]
        self.pos = 0

    def take(self, n: int) -> str:
        if n <= 0:
            return ""
        if self.pos + n > len(self.ids):
            self.pos = 0
        text = self.tokenizer.decode(self.ids[self.pos : self.pos + n])
        self.pos += n
        return text.strip()


def lengthen(rows: list[dict[str, Any]], processor: Any, comp: Composition, seed: int) -> list[dict[str, Any]]:
    """Rows with their prompt and answers filled to lengths drawn from ``comp`` (see module doc)."""
    from vlalign.data.collate import CollateConfig, encode_prompt, encode_response
    from vlalign.data.records import PreferenceRecord

    rng = random.Random(seed)
    tok = getattr(processor, "tokenizer", processor)
    filler = Filler(tok, seed)
    cfg = CollateConfig(max_length=4096)
    out = []
    for r in rows:
        base = PreferenceRecord(id=r["id"], images=r["images"], prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
        overhead = len(encode_prompt(processor, base, cfg)[0])  # template + image tokens + the question
        if comp.prompt_total is not None:
            text_n = rng.randint(*comp.prompt_total) - overhead
        else:
            text_n = rng.randint(*comp.prompt_text) - (overhead - _image_tokens(processor, base, cfg))
        row = {**r, "prompt": f"{r['prompt']} Context: {filler.take(text_n)}".strip()}
        for key in ("chosen", "rejected"):
            target = rng.randint(*comp.response)
            have = len(encode_response(processor, r[key])[0])
            row[key] = f"{r[key]} {filler.take(target - have)}".strip()
        row["chosen_segments"], row["rejected_segments"] = [], []
        out.append(row)
    return out


def _image_tokens(processor: Any, record: Any, cfg: Any) -> int:
    from vlalign.data.collate import encode_prompt
    from vlalign.models.chat import image_token_ids

    ids = encode_prompt(processor, record, cfg)[0]
    image_ids = set(image_token_ids(processor))
    return sum(1 for t in ids if t in image_ids)


def token_counts(rows: list[dict[str, Any]], processor: Any, image_ids: set[int]) -> list[dict[str, int]]:
    """Per row: prompt tokens (image tokens included), image tokens, chosen and rejected tokens, as
    vlalign encodes them (the end-of-turn suffix counts as response)."""
    from vlalign.data.collate import CollateConfig, encode_prompt, encode_response
    from vlalign.data.records import PreferenceRecord

    cfg = CollateConfig(max_length=4096)
    counts = []
    for r in rows:
        rec = PreferenceRecord(id=r["id"], images=r["images"], prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"])
        prompt_ids = encode_prompt(processor, rec, cfg)[0]
        counts.append({
            "prompt": len(prompt_ids),
            "image": sum(1 for t in prompt_ids if t in image_ids),
            "chosen": len(encode_response(processor, r["chosen"])[0]),
            "rejected": len(encode_response(processor, r["rejected"])[0]),
        })
    return counts


def prepare_inputs(workdir: Path, rows_needed: int, family: str = "llava", size: str = "small",
                   seed: int = 0) -> dict[str, Any]:
    """Build (once) the model and the rows both sides use; return their paths and token counts.

    ``pairs``: preference rows without segment annotations (DPO uses none, and TRL's loader does not
    know the field); ``prompts``: the same scenes and prompts as "Describe the image." prompt records with
    the scene in ``meta`` (what the Shapes rule verifier reads). Every returned path is absolute: the
    workers run in their own folders, so a path relative to the caller's cwd would not resolve there.
    """
    from transformers import AutoProcessor

    from vlalign.models.chat import image_token_ids

    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    model_dir = build_model(workdir, family, size)
    processor = AutoProcessor.from_pretrained(model_dir)
    comp = composition(family, size)
    rows = shapes_rows(workdir, rows_needed, comp.image_px)
    if comp.response is not None:
        rows = lengthen(rows, processor, comp, seed)
    else:
        rows = [{**r, "chosen_segments": [], "rejected_segments": []} for r in rows]
    pairs, prompts = workdir / f"pairs_{family}_{size}.jsonl", workdir / f"prompts_{family}_{size}.jsonl"
    with pairs.open("w") as fp, prompts.open("w") as fq:
        for r in rows:
            fp.write(json.dumps(r) + "\n")
            meta = {"task": "caption", "scene": r["meta"]["scene"]}
            fq.write(json.dumps({"id": r["id"], "images": r["images"], "prompt": r["prompt"], "meta": meta}) + "\n")
    counts = token_counts(rows, processor, set(image_token_ids(processor)))
    info = {"family": family, "size": size, **safetensors_param_count(model_dir)}
    return {"model_dir": model_dir, "pairs": pairs, "prompts": prompts, "model_info": info, "tokens": counts,
            "config": json.loads((model_dir / "config.json").read_text())}


def token_summary(counts: list[dict[str, int]]) -> dict[str, float]:
    """Mean / min / max of each count (what the report shows about the rows)."""
    out: dict[str, float] = {}
    for key in ("prompt", "image", "chosen", "rejected"):
        vals = [c[key] for c in counts]
        out[f"{key}_mean"], out[f"{key}_min"], out[f"{key}_max"] = round(sum(vals) / len(vals), 1), min(vals), max(vals)
    return out
