"""`vlalign demo`: the front door — SFT learns a hallucination bias, DPO on its own corrected
answers removes it, and a same-budget SFT control shows how much of that is preference learning.

The recipe reads top to bottom (:func:`run_demo`):

1. generate the Shapes benchmark (captions of images with a red circle often add a "blue square");
2. build a tiny LLaVA, optionally warm up its vision tower on object presence (``vision_warmup``;
   without it the random-init tower leaves SFT image-blind), and SFT it on the biased captions + yes/no questions → it hallucinates;
3. sample the SFT model on training prompts, correct each answer with the ground-truth verifier
   (chosen = corrected answer, rejected = its own answer: on-policy RLHF-V style pairs);
4. DPO from the SFT model on those pairs;
5. CONTROL: from the same SFT model, the same number of steps / batch / learning rate of plain
   SFT on the chosen answers alone — a gain the control also gets is extra supervised data, not
   preference learning;
6. evaluate all three (CHAIR, POPE, ...) and write ``metrics.json`` + ``report.html``.

Nothing is tuned on the eval split: eval scenes are disjoint from the training scenes, and the
pairs come only from training prompts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import typer
from pydantic import Field

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG
from vlalign.config import BaseConfig
from vlalign.data.shapes.generate import ShapesConfig
from vlalign.evaluation.evaluate import EvalConfig
from vlalign.evaluation.generate import GenerationConfig
from vlalign.experiments.common import StageClock, experiment_config, start_experiment, written_line
from vlalign.experiments.common import (
    with_absolute_images as absolute_images,  # records' images made absolute
)
from vlalign.experiments.common import write_jsonl as write_pairs  # canonical records -> JSONL
from vlalign.experiments.vision_warmup import VisionWarmupConfig

DEFAULT_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
KEYS = ["image_nll_gap", "chair_i", "chair_s", "object_recall", "bias_rate", "pope_f1", "pope_accuracy", "pope_adversarial_f1",
        "pope_yes_ratio", "answer_length", "distinct_2"]  # fmt: skip


class ModelSize(BaseConfig):
    """Dimensions of the demo's tiny LLaVA (see :class:`vlalign.models.tiny.SizeSpec`)."""

    text_hidden: int = 128
    text_layers: int = 2
    text_heads: int = 4
    text_intermediate: int = 512
    vision_hidden: int = 128
    vision_layers: int = 2
    vision_heads: int = 4
    vision_intermediate: int = 512
    vocab_size: int = 640
    patch_size: int = 8


class Stage(BaseConfig):
    """One training stage's budget."""

    steps: int = Field(..., ge=1)
    batch_size: int = Field(32, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: str = "cosine"


class SamplingConfig(BaseConfig):
    """How on-policy answers are drawn from the SFT model for labelling."""

    n_prompts: int = Field(1000, ge=1, description="training caption prompts to sample")
    samples_per_prompt: int = Field(1, ge=1)
    temperature: float = Field(1.0, gt=0)
    max_new_tokens: int = Field(40, ge=1)
    add_missing: bool = Field(True, description="chosen also names the objects the answer left out (False: only fix claims)")
    n_yes_no: int = Field(0, ge=0, description="training yes/no questions sampled too (wrong answers -> pairs)")


class DPOStage(Stage):
    loss: str = "dpo"
    beta: float = Field(0.1, gt=0)
    sft_weight: float = Field(0.0, ge=0, description="+ this × NLL of chosen (the control trains this term alone)")
    replay_yes_no: int = Field(0, ge=0, description="SFT yes/no rows replayed beside the pairs, in DPO and the "
                               "control alike (trainers' `replay`); 0 = off")  # fmt: skip
    replay_weight: float = Field(1.0, ge=0)


class DemoConfig(BaseConfig):
    """Every knob of the demo; ``seed`` drives data, model init, training order and sampling."""

    seed: int = 0
    family: str = "llava"
    threads: int | None = Field(None, ge=1, description="torch CPU threads; None = torch's default")
    model: ModelSize = Field(default_factory=ModelSize)
    data: ShapesConfig = Field(default_factory=lambda: ShapesConfig(n_train=3000, n_eval=300, n_safety=0, n_safety_eval=0))
    vision_warmup: VisionWarmupConfig = Field(default_factory=VisionWarmupConfig)
    freeze: list[str] = Field(
        default_factory=list, description="model parts fixed in SFT/DPO/control (e.g. [vision_tower] after the warm-up)"
    )
    gap_rows: int = Field(64, ge=0, description="held-out caption rows for the own-vs-swapped image NLL gap (0 = skip)")
    sft: Stage = Field(default_factory=lambda: Stage(steps=300, learning_rate=1e-3, warmup_steps=20))
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    dpo: DPOStage = Field(default_factory=lambda: DPOStage(steps=60, learning_rate=2e-4))
    run_control: bool = True
    eval_limit: int | None = Field(None, ge=1, description="rows of each eval file (None = all)")
    eval_tasks: list[str] = Field(default_factory=lambda: ["chair", "pope"])
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    target_chair_cut: float = Field(0.4, description="success: DPO lowers CHAIR_i by at least this share")
    pope_tolerance: float = Field(0.01, ge=0, description="success: DPO's POPE F1 ≥ SFT's − this")


# ------------------------------------------------------------------------------------------ steps


def build_model(cfg: DemoConfig, out: Path) -> Path:
    """Random tiny model of the configured size, saved like :func:`vlalign.models.tiny.build_tiny`."""
    import torch

    from vlalign.models.tiny import TINY_FAMILIES, SizeSpec

    spec = SizeSpec(**cfg.model.model_dump(), image_size=cfg.data.image_size)
    torch.manual_seed(cfg.seed)
    model, processor = TINY_FAMILIES.get(cfg.family)(spec, cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def train_config(
    kind: str, stage: Stage, model_dir: Path, data_file: Path, out: Path, seed: int, freeze: list[str] | None = None, **extra: Any
) -> Any:
    from vlalign.trainers.configs import DPOConfig, SFTConfig

    cls = {"sft": SFTConfig, "dpo": DPOConfig}[kind]
    return cls(
        output_dir=str(out), seed=seed, model={"name_or_path": str(model_dir), "freeze": list(freeze or [])},
        data={"train": str(data_file), "max_length": 160},
        per_device_batch_size=stage.batch_size, max_steps=stage.steps, learning_rate=stage.learning_rate,
        warmup_steps=stage.warmup_steps, lr_scheduler=stage.lr_scheduler, progress=False, save_merged=False,
        mixed_precision="no", **extra,
    )  # fmt: skip


def evaluate_dir(model_dir: Path, data_dir: Path, out: Path, cfg: DemoConfig) -> dict[str, float]:
    from vlalign.evaluation.evaluate import evaluate, write_outputs
    from vlalign.models.load import ModelConfig, load_model

    ecfg = EvalConfig(tasks=cfg.eval_tasks, limit=cfg.eval_limit, seed=cfg.seed, generation=cfg.generation)
    loaded = load_model(ModelConfig(name_or_path=str(model_dir)))
    metrics, ctx = evaluate(loaded.model, loaded.processor, data_dir, ecfg)
    if cfg.gap_rows >= 2:  # does the model read the picture? (blind: gap ≈ 0)
        from vlalign.evaluation.evaluate import read_records
        from vlalign.experiments.vision_warmup import image_nll_gap

        rows = absolute_images(read_records(data_dir / "eval_captions.jsonl", cfg.gap_rows), data_dir)
        metrics.update(image_nll_gap(loaded.model, loaded.processor, rows))
    write_outputs(out, metrics, ctx, {"model": str(model_dir), "data": str(data_dir)})
    return metrics


def verdict(m: dict[str, dict[str, float]], cfg: DemoConfig) -> dict[str, Any]:
    """Did DPO hit the target, and did the control match it? Plain numbers, no spin."""
    from vlalign.evaluation.report import relative_change

    sft, dpo = m["sft"], m["dpo"]
    cut = -relative_change(sft["chair_i"], dpo["chair_i"])
    out: dict[str, Any] = {
        "chair_i_cut_dpo": cut,
        "pope_f1_change_dpo": dpo["pope_f1"] - sft["pope_f1"],
        "target_met": bool(cut >= cfg.target_chair_cut and dpo["pope_f1"] >= sft["pope_f1"] - cfg.pope_tolerance),
    }
    if "control" in m:
        ctl = m["control"]
        out["chair_i_cut_control"] = -relative_change(sft["chair_i"], ctl["chair_i"])
        out["pope_f1_change_control"] = ctl["pope_f1"] - sft["pope_f1"]
        out["control_does_as_well"] = bool(ctl["chair_i"] <= dpo["chair_i"])
    return out


def verdict_text(v: dict[str, Any], cfg: DemoConfig) -> str:
    if v["chair_i_cut_dpo"] != v["chair_i_cut_dpo"]:  # NaN: SFT's CHAIR_i was 0
        return ("The SFT model made no caption hallucination (CHAIR_i = 0), so there was nothing for DPO to "
                "remove: the demo's premise failed (train SFT less, or raise data.bias).")
    lines = [
        f"DPO changed CHAIR_i by {-v['chair_i_cut_dpo']:+.1%} relative to SFT (target: at least "
        f"-{cfg.target_chair_cut:.0%}) and POPE F1 by {v['pope_f1_change_dpo']:+.3f}: "
        + ("TARGET MET." if v["target_met"] else "target NOT met."),
    ]
    if "chair_i_cut_control" in v:
        if v["control_does_as_well"]:
            tail = ("The control's CHAIR_i is as low as DPO's or lower: whatever DPO achieved here is explained by "
                    "supervised training on the corrected answers, not by preference learning.")
        else:
            tail = "DPO ends below the control on CHAIR_i: the preference signal adds something beyond the extra SFT data."
        lines.append(
            f"The control (same steps of SFT on the chosen answers alone) changed CHAIR_i by "
            f"{-v['chair_i_cut_control']:+.1%} and POPE F1 by {v['pope_f1_change_control']:+.3f}. " + tail
        )
    return "\n\n".join(lines)


def write_report(out: Path, m: dict[str, dict[str, float]], v: dict[str, Any], cfg: DemoConfig, info: dict) -> Path:
    from vlalign.evaluation.report import Report, metrics_table, plot_bars, plot_curves, read_metrics_jsonl

    runs = {name: read_metrics_jsonl(out / name / "metrics.jsonl") for name in ("sft", "dpo", "control")
            if (out / name / "metrics.jsonl").is_file()}  # fmt: skip
    rep = Report(f"vlalign demo (seed {cfg.seed})")
    rep.text(verdict_text(v, cfg), note=True)
    rep.heading("Before / after")
    keys = [k for k in KEYS if any(k in g for g in m.values())]
    rep.figure(plot_bars(m, ["chair_i", "chair_s", "object_recall", "bias_rate", "pope_f1"]), "SFT vs DPO vs control")
    rep.table(metrics_table(m, keys, baseline="sft"))
    rep.heading("Training curves")
    if "sft" in runs:
        rep.figure(plot_curves({"sft": runs["sft"]}, ["loss"], smooth_window=5), "SFT loss (biased captions + yes/no)")
    if "dpo" in runs:
        rep.figure(plot_curves({"dpo": runs["dpo"]}, ["loss", "accuracy", "margin"], smooth_window=3),
                   "DPO: loss, pair accuracy and reward margin on the on-policy pairs")
    if "control" in runs:  # its loss is an NLL, not a DPO loss: never on the same axes
        rep.figure(plot_curves({"control": runs["control"]}, ["loss"], smooth_window=3),
                   "Control: SFT NLL on the chosen answers (same steps, batch and learning rate as DPO)")
    rep.heading("Pipeline")
    rep.code(json.dumps(info, indent=2))
    return rep.write(out / "report.html")


# ------------------------------------------------------------------------------------------ recipe


def build_sft_base(cfg: DemoConfig, out: Path, stage: StageClock, log: Any = print) -> tuple[Path, Path]:
    """Shapes data → random tiny model → (vision warm-up) → SFT; returns (data dir, SFT model dir).

    Shared by the demo and the experiments (kl-sweep, dpo-vs-rl), so they all start from the same recipe.
    """
    from vlalign.data.shapes.generate import generate_shapes
    from vlalign.evaluation.evaluate import read_records
    from vlalign.experiments.vision_warmup import warm_up_vision
    from vlalign.trainers.sft import train_sft

    t0 = time.perf_counter()
    data = out / "data"
    generate_shapes(data, cfg.data.model_copy(update={"seed": cfg.seed}))
    stage("data", t0)

    t0 = time.perf_counter()
    base = build_model(cfg, out / "base_model")
    sft_rows = absolute_images(read_records(data / "sft.jsonl"), data)
    stage("model", t0)
    if cfg.vision_warmup.steps > 0:  # training scenes only: the SFT rows' ground truth
        t0 = time.perf_counter()
        base, _ = warm_up_vision(base, sft_rows, cfg.vision_warmup, out / "warm_model", cfg.seed, log)
        stage("vision_warmup", t0)
    t0 = time.perf_counter()
    train_sft(train_config("sft", cfg.sft, base, data / "sft.jsonl", out / "sft", cfg.seed, cfg.freeze), sft_rows)
    stage("sft", t0)
    return data, out / "sft" / "final"


def onpolicy_prompts(data: Path, n_captions: int, n_yes_no: int) -> tuple[list[Any], list[Any]]:
    """The first training caption prompts (as plain prompts: their biased reference is not a target)
    and yes/no questions (with their reference: the verifier needs it), images made absolute."""
    from vlalign.evaluation.evaluate import read_records
    from vlalign.experiments.method_runs import as_prompt

    records = read_records(data / "sft.jsonl")
    captions = [as_prompt(r) for r in records if r.meta.get("task") == "caption"][:n_captions]
    yes_no = [r for r in records if r.meta.get("task") == "yes_no"][:n_yes_no]
    return absolute_images(captions, data), absolute_images(yes_no, data)


def sample_pairs(cfg: DemoConfig, sft_model: Path, prompts: list[Any], out: Path) -> tuple[list[Any], Any, Path, dict[str, Any]]:
    """The SFT model's answers to ``prompts``, corrected by the ground-truth verifier → on-policy pairs,
    written to ``out/pairs/onpolicy.jsonl``. Also returns their cost (seconds, forward tokens), which
    the experiments charge to DPO."""
    from vlalign.experiments.method_runs import TokenCounter, text_vocab_size
    from vlalign.experiments.onpolicy import sample_onpolicy_pairs
    from vlalign.models.load import ModelConfig, load_model

    t0 = time.perf_counter()
    s = cfg.sampling
    loaded = load_model(ModelConfig(name_or_path=str(sft_model)))
    gen = cfg.generation.model_copy(update={"do_sample": True, "temperature": s.temperature, "max_new_tokens": s.max_new_tokens})
    with TokenCounter(text_vocab_size(sft_model)) as counter:
        pairs, stats = sample_onpolicy_pairs(
            loaded.model, loaded.processor, prompts, gen, None, cfg.seed, s.samples_per_prompt, s.add_missing
        )
    del loaded
    if not pairs:
        raise RuntimeError("the SFT model made no hallucination on the sampled prompts: there is nothing to prefer")
    pair_file = write_pairs(pairs, out / "pairs" / "onpolicy.jsonl")
    return pairs, stats, pair_file, {"seconds": round(time.perf_counter() - t0, 1), "forward_tokens": counter.tokens}


def replay_config(data: Path, n_yes_no: int, weight: float, out: Path) -> dict[str, Any]:
    """The trainers' ``replay`` section: the first ``n_yes_no`` SFT yes/no rows (written to
    ``out/replay/yes_no.jsonl``), replayed beside the training data. WHY: caption training alone moved the
    yes/no answers (POPE) on one seed; replaying the SFT mixture's other task holds them (configs/demo.yaml)."""
    if not n_yes_no:
        return {}
    _, rows = onpolicy_prompts(data, 0, n_yes_no)
    return {"train": str(write_pairs(rows, out / "replay" / "yes_no.jsonl")), "weight": weight}


def save_demo_base(
    out: Path, data: Path, sft_model: Path, pairs: list[Any], pair_file: Path, captions: list[Any], info: dict[str, Any]
) -> None:
    """``out/base.json`` + the caption prompts as an RL prompt file, so the experiments can start from this
    very SFT model and these pairs: ``vlalign experiment dpo-vs-rl base_from=<demo --out>``."""
    from vlalign.experiments.method_runs import Base, save_base, text_vocab_size

    prompt_file = write_pairs(captions, out / "prompts" / "captions.jsonl")
    save_base(Base(data, sft_model, pairs, pair_file, prompt_file, text_vocab_size(sft_model), info), out)


def run_demo(cfg: DemoConfig, out_dir: str | Path, log: Any = print) -> dict[str, Any]:
    """The whole demo; returns (and writes) ``metrics.json``'s content."""

    from vlalign.trainers.dpo import train_dpo
    from vlalign.trainers.sft import train_sft

    out = start_experiment(cfg.threads, out_dir)
    stage = StageClock("demo", log)
    timing = stage.timing
    t_all = time.perf_counter()

    data, sft_model = build_sft_base(cfg, out, stage, log)

    t0 = time.perf_counter()
    captions, yes_no = onpolicy_prompts(data, cfg.sampling.n_prompts, cfg.sampling.n_yes_no)
    pairs, pair_stats, pair_file, sampling_cost = sample_pairs(cfg, sft_model, captions + yes_no, out)
    stage("pairs", t0)
    log(f"[demo] on-policy pairs: {pair_stats.to_dict()}")
    save_demo_base(out, data, sft_model, pairs, pair_file, captions,
                   {"pairs": pair_stats.to_dict(), "pair_sampling": sampling_cost, "timing_s": dict(timing)})  # fmt: skip

    t0 = time.perf_counter()
    d = cfg.dpo
    replay = replay_config(data, d.replay_yes_no, d.replay_weight, out)
    train_dpo(train_config("dpo", d, sft_model, pair_file, out / "dpo", cfg.seed, cfg.freeze, loss=d.loss, beta=d.beta,
                           sft_weight=d.sft_weight, replay=replay), pairs)  # fmt: skip
    stage("dpo", t0)
    if cfg.run_control:
        t0 = time.perf_counter()
        train_sft(train_config("sft", d, sft_model, pair_file, out / "control", cfg.seed, cfg.freeze, replay=replay),
                  pairs)  # fmt: skip
        stage("control", t0)

    t0 = time.perf_counter()
    metrics = {"sft": evaluate_dir(sft_model, data, out / "eval_sft", cfg)}
    metrics["dpo"] = evaluate_dir(out / "dpo" / "final", data, out / "eval_dpo", cfg)
    if cfg.run_control:
        metrics["control"] = evaluate_dir(out / "control" / "final", data, out / "eval_control", cfg)
    stage("eval", t0)
    timing["total"] = round(time.perf_counter() - t_all, 1)

    v = verdict(metrics, cfg)
    info = {"seed": cfg.seed, "pairs": pair_stats.to_dict(), "timing_s": timing}
    result = {**metrics, "verdict": v, **info}
    (out / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
    write_report(out, metrics, v, cfg, info)
    return result


# ------------------------------------------------------------------------------------------ CLI


OUT_OPTION = typer.Option(Path("runs/demo"), "--out", "-o", help="output folder")
SEED_OPTION = typer.Option(None, "--seed", help="seed of data, model, training and sampling")


def demo_command(
    out: Path = OUT_OPTION,
    seed: int | None = SEED_OPTION,
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """SFT a tiny VLM into hallucinating, fix it with on-policy DPO, compare with an SFT control."""
    from vlalign.evaluation.report import markdown_table, metrics_table

    cfg = experiment_config(DemoConfig, DEFAULT_CONFIG, config, overrides, out, seed)
    result = run_demo(cfg, out, log=lambda s: typer.echo(s, err=True))
    groups = {k: result[k] for k in ("sft", "dpo", "control") if k in result}
    typer.echo(markdown_table(metrics_table(groups, KEYS, baseline="sft")))
    typer.echo("\n" + verdict_text(result["verdict"], cfg))
    typer.echo(written_line(out, result))
