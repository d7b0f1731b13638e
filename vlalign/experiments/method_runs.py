"""Shared by `vlalign experiment kl-sweep` and `vlalign experiment dpo-vs-rl`: one SFT model, then
"train method M with KL coefficient c and seed s from it, and measure the result".

WHY one module: both experiments must compare methods on exactly the same footing — the same
Shapes data, the same SFT model (which is also the KL reference), the same training prompts, and
the same measurement. Keeping that in one place means a difference between DPO and GRPO in a
report can only come from the method, not from two slightly different pipelines.

Measurement of a trained model (:func:`measure`):

- fidelity: the usual eval (CHAIR_i, POPE F1 … greedy, held-out scenes) and the gold reward — the
  ground-truth Shapes verifier (``shapes_rules``) on answers *sampled* at temperature 1;
- diversity, on the same samples (K per held-out prompt): distinct-2 over all samples, self-BLEU
  within each prompt's K samples (1 = the K answers are identical: mode collapse), and the mean
  token entropy of the policy at the sampled positions;
- KL to the reference (the SFT model): Monte-Carlo estimate Σ_t [log π(y_t) − log π_ref(y_t)] per
  sampled answer (k1 summed over the answer; unbiased for the sequence KL), averaged over answers.

Compute is counted by :class:`TokenCounter` as token positions entering the language model's input
embedding (prompt, image placeholders and response, padding included; one per decode step with the
KV cache). Backward passes are not counted (≈ 2× the forward of the trained rows).
"""

from __future__ import annotations

import importlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.data.shapes.generate import ShapesConfig
from vlalign.evaluation.generate import GenerationConfig
from vlalign.experiments.demo import DemoConfig, DPOStage, ModelSize, SamplingConfig, Stage
from vlalign.experiments.vision_warmup import VisionWarmupConfig
from vlalign.monitors import MonitorSpec
from vlalign.registry import Registry


class RLStage(BaseConfig):
    """One RL run's budget (GRPO / PPO): ``steps`` rollouts of ``prompts_per_step`` × ``num_samples``,
    one policy update per rollout unless ``extra`` says otherwise."""

    steps: int = Field(40, ge=1, description="rollouts (= policy updates with ppo_epochs=num_minibatches=1)")
    prompts_per_step: int = Field(8, ge=1)
    num_samples: int = Field(4, ge=2, description="K answers per prompt (the group)")
    learning_rate: float = Field(2e-4, gt=0)
    max_new_tokens: int = Field(40, ge=1)
    temperature: float = Field(1.0, gt=0)
    replay_yes_no: int = Field(0, ge=0, description="SFT yes/no rows replayed beside each update (PPO-ptx); 0 = off")
    replay_weight: float = Field(1.0, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict, description="any other key of the trainer's config")


class ProbeConfig(BaseConfig):
    """Sampled answers on held-out caption prompts: gold reward, diversity and KL are measured on them."""

    n_prompts: int = Field(48, ge=1)
    samples_per_prompt: int = Field(4, ge=2, description="K ≥ 2: self-BLEU is computed within each prompt's K")
    max_new_tokens: int = Field(40, ge=1)
    temperature: float = Field(1.0, gt=0)


class ExperimentBase(BaseConfig):
    """The pieces every comparison shares: data, the SFT model, the pairs, the eval and the probe."""

    seed: int = 0
    family: str = "llava"
    threads: int | None = Field(1, ge=1, description="torch CPU threads (tiny matmuls gain little from more)")
    model: ModelSize = Field(default_factory=ModelSize)
    data: ShapesConfig = Field(default_factory=lambda: ShapesConfig(n_train=3000, n_eval=300, n_safety=0, n_safety_eval=0))
    vision_warmup: VisionWarmupConfig = Field(default_factory=VisionWarmupConfig)
    freeze: list[str] = Field(default_factory=list, description="model parts fixed in SFT and every method (e.g. [vision_tower])")
    sft: Stage = Field(default_factory=lambda: Stage(steps=300, learning_rate=1e-3, warmup_steps=20))
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(n_prompts=600))
    base_from: str | None = Field(
        None, description="reuse data, SFT model and pairs of an earlier run's folder (its base.json) instead of redoing them"
    )
    n_rl_prompts: int | None = Field(None, ge=1, description="training caption prompts for RL; None = sampling.n_prompts")
    dpo: DPOStage = Field(default_factory=lambda: DPOStage(steps=40, batch_size=16, learning_rate=2e-4))
    grpo: RLStage = Field(default_factory=RLStage)
    ppo: RLStage = Field(default_factory=RLStage)
    monitors: list[MonitorSpec] = Field(
        default_factory=lambda: [MonitorSpec(name="kl_explosion", action="warn", kwargs={"threshold": 10.0})]
    )
    probe: ProbeConfig = Field(default_factory=ProbeConfig)
    eval_limit: int | None = Field(200, ge=1, description="rows of each eval file (None = all)")
    eval_tasks: list[str] = Field(default_factory=lambda: ["chair", "pope"])
    generation: GenerationConfig = Field(default_factory=GenerationConfig)

    def demo_view(self) -> DemoConfig:
        """The demo's config with these values, so the demo's building blocks can be reused as is."""
        keys = ("seed", "family", "threads", "model", "data", "vision_warmup", "freeze", "sft", "sampling", "eval_limit",
                "eval_tasks", "generation")  # fmt: skip
        return DemoConfig(**{k: getattr(self, k) for k in keys})


# ------------------------------------------------------------------------------------------ compute


class TokenCounter:
    """Counts token positions entering the text embedding (``num_embeddings == vocab_size``) of any
    model while active — trainers load their own model copies, so a global module hook is the only
    way to see them all without touching the trainers."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size
        self.tokens = 0
        self._handle: Any = None

    def _hook(self, module: Any, args: tuple) -> None:
        import torch

        if isinstance(module, torch.nn.Embedding) and module.num_embeddings == self.vocab_size and args:
            self.tokens += int(args[0].numel())

    def __enter__(self) -> TokenCounter:  # noqa: PYI034 (Self needs Python 3.11; we support 3.10)
        from torch.nn.modules.module import register_module_forward_pre_hook

        self._handle = register_module_forward_pre_hook(self._hook)
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.remove()


def text_vocab_size(model_dir: Path) -> int:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(model_dir)
    text = getattr(cfg, "text_config", None) or cfg
    return int(text.vocab_size)


# ------------------------------------------------------------------------------------------ the base


@dataclass
class Base:
    """What every method starts from."""

    data_dir: Path
    sft_model: Path
    pairs: list[Any]  # on-policy PreferenceRecords (absolute image paths)
    pair_file: Path
    prompt_file: Path  # RL training prompts: the same caption prompts the pairs were sampled from
    vocab_size: int
    info: dict[str, Any] = field(default_factory=dict)  # pair stats, timings, sampling cost


def prepare_base(cfg: ExperimentBase, out: Path, log: Callable[[str], None]) -> Base:
    """Shapes data → tiny model → SFT → on-policy pairs (one sample per training caption prompt,
    corrected by the verifier); also writes those prompts as the RL prompt file."""
    from vlalign.experiments.common import StageClock
    from vlalign.experiments.demo import build_sft_base, onpolicy_prompts, sample_pairs, write_pairs

    demo = cfg.demo_view()
    out = out.resolve()  # files written below hold absolute image paths: they must not depend on the cwd
    clock = StageClock("base", log)
    data, sft_model = build_sft_base(demo, out, clock, log)
    info: dict[str, Any] = {"timing_s": {**clock.timing, "data+sft": round(sum(clock.timing.values()), 1)}}

    captions, yes_no = onpolicy_prompts(data, max(cfg.sampling.n_prompts, cfg.n_rl_prompts or 0), cfg.sampling.n_yes_no)
    prompt_file = write_pairs(captions[: cfg.n_rl_prompts or cfg.sampling.n_prompts], out / "prompts" / "captions.jsonl")
    vocab = text_vocab_size(sft_model)
    pairs, stats, pair_file, info["pair_sampling"] = sample_pairs(demo, sft_model, captions[: cfg.sampling.n_prompts] + yes_no, out)
    info["pairs"] = stats.to_dict()
    log(f"[base] on-policy pairs: {stats.to_dict()} ({info['pair_sampling']['seconds']:.0f} s)")
    return save_base(Base(data, sft_model, pairs, pair_file, prompt_file, vocab, info), out)


def save_base(base: Base, out: Path) -> Base:
    """Write ``out/base.json`` so a later experiment can start from this base (``base_from=out``)."""
    paths = {k: str(getattr(base, k).resolve()) for k in ("data_dir", "sft_model", "pair_file", "prompt_file")}
    (out / "base.json").write_text(json.dumps({**paths, "vocab_size": base.vocab_size, "info": base.info}, indent=2) + "\n")
    return base


def load_base(folder: str | Path) -> Base:
    """The :class:`Base` an earlier run wrote (``base.json``), so a second experiment shares its SFT model.
    WHY: both experiments then compare methods from the very same SFT model and pairs, and the
    second one skips ~5 minutes of SFT."""
    from vlalign.evaluation.evaluate import read_records

    path = Path(folder) / "base.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; base_from must name the --out folder of a finished demo, kl-sweep or dpo-vs-rl run"
        )
    saved = json.loads(path.read_text())
    pair_file = Path(saved["pair_file"])
    pairs = read_records(pair_file)
    for rec in pairs:  # images are stored relative to the run's working directory by older runs
        rec.images = [str(Path(p).resolve()) if isinstance(p, str) else p for p in rec.images]
    return Base(Path(saved["data_dir"]), Path(saved["sft_model"]), pairs, pair_file,
                Path(saved["prompt_file"]), int(saved["vocab_size"]), {**saved["info"], "base_from": str(folder)})  # fmt: skip


def get_base(cfg: ExperimentBase, out: Path, log: Callable[[str], None]) -> Base:
    """``base_from`` when set, else a fresh :func:`prepare_base`."""
    if cfg.base_from:
        log(f"[base] reusing data, SFT model and pairs from {cfg.base_from}")
        return load_base(cfg.base_from)
    return prepare_base(cfg, out, log)


def as_prompt(rec: Any) -> Any:
    """An SFT caption record as a plain prompt record (the reference caption is biased; RL ignores it)."""
    from vlalign.data.records import PromptRecord

    return PromptRecord(id=rec.id, images=list(rec.images), prompt=rec.prompt, meta=dict(rec.meta))


# ------------------------------------------------------------------------------------------ training

# method name -> train(base, cfg, coef, seed, out) -> summary dict; a method is one function.
METHODS: Registry[Callable[..., dict[str, Any]]] = Registry("method")
# methods trained on the shared on-policy pairs (their one-off sampling is charged to each run)
PAIR_METHODS = ("dpo", "sft_control")
# RL method -> (module, config class, train function) — PPO is used only when its module exists.
RL_TRAINERS = {"grpo": ("vlalign.trainers.grpo", "GRPOConfig", "train_grpo"),
               "ppo": ("vlalign.trainers.ppo", "PPOConfig", "train_ppo")}  # fmt: skip


def rl_available(name: str) -> bool:
    """True when the RL trainer's module can be imported (PPO is still being written elsewhere)."""
    module, cls, fn = RL_TRAINERS[name]
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return False
    return hasattr(mod, cls) and hasattr(mod, fn)


@METHODS.register("dpo")
def train_dpo_method(base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    """DPO from the SFT model on the shared on-policy pairs; ``coef`` is β."""
    from vlalign.experiments.demo import replay_config, train_config
    from vlalign.trainers.dpo import train_dpo

    d = cfg.dpo
    tcfg = train_config("dpo", d, base.sft_model, base.pair_file, out, seed, cfg.freeze, loss=d.loss, beta=coef,
                        sft_weight=d.sft_weight, replay=replay_config(base.data_dir, d.replay_yes_no, d.replay_weight, out))  # fmt: skip
    summary = train_dpo(tcfg, base.pairs)
    return {"stop_reason": None, "alerts": 0, "updates": d.steps, "responses_per_update": 2 * d.batch_size,
            "summary_keys": sorted(summary)}  # fmt: skip


@METHODS.register("sft_control")
def train_sft_control(base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    """The same-budget control: DPO's steps, batch and learning rate of plain SFT on the pairs' chosen
    (verifier-corrected) answers, with DPO's replay. A gain the control also gets comes from supervised
    training on corrected answers, not from preferences or rewards. ``coef`` is unused."""
    from vlalign.experiments.demo import replay_config, train_config
    from vlalign.trainers.sft import train_sft

    d = cfg.dpo
    train_sft(train_config("sft", d, base.sft_model, base.pair_file, out, seed, cfg.freeze,
                           replay=replay_config(base.data_dir, d.replay_yes_no, d.replay_weight, out)), base.pairs)  # fmt: skip
    return {"stop_reason": None, "alerts": 0, "updates": d.steps, "responses_per_update": d.batch_size}


def rl_train_config(name: str, base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> Any:
    """The trainer config of one RL run: one update per rollout, the ground-truth verifier as reward."""
    from vlalign.experiments.demo import replay_config

    module, cls_name, _ = RL_TRAINERS[name]
    stage: RLStage = getattr(cfg, name)
    cls = getattr(importlib.import_module(module), cls_name)
    values = {
        "output_dir": str(out), "seed": seed, "model": {"name_or_path": str(base.sft_model), "freeze": list(cfg.freeze)},
        "data": {"train": str(base.prompt_file), "max_length": 160},
        "per_device_batch_size": stage.prompts_per_step, "max_steps": stage.steps,
        "learning_rate": stage.learning_rate, "lr_scheduler": "constant", "mixed_precision": "no",
        "progress": False, "save_merged": False,
        "rollout": {"num_samples": stage.num_samples, "max_new_tokens": stage.max_new_tokens,
                    "temperature": stage.temperature},
        "reward": {"name": "shapes_rules"}, "kl_coef": coef,
        "monitors": [m.model_dump() for m in cfg.monitors],
        "replay": replay_config(base.data_dir, stage.replay_yes_no, stage.replay_weight, out), **stage.extra,
    }  # fmt: skip
    return cls.model_validate(values)


def _train_rl(name: str, base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    module, _, fn = RL_TRAINERS[name]
    tcfg = rl_train_config(name, base, cfg, coef, seed, out)
    res = getattr(importlib.import_module(module), fn)(tcfg)
    stage: RLStage = getattr(cfg, name)
    updates = stage.steps * tcfg.ppo_epochs * tcfg.num_minibatches
    return {"stop_reason": res.get("stop_reason"), "alerts": len(res.get("alerts", [])), "updates": updates,
            "responses_per_update": stage.prompts_per_step * stage.num_samples}  # fmt: skip


METHODS.register("grpo")(lambda base, cfg, coef, seed, out: _train_rl("grpo", base, cfg, coef, seed, out))
METHODS.register("ppo")(lambda base, cfg, coef, seed, out: _train_rl("ppo", base, cfg, coef, seed, out))


def train_method(method: str, base: Base, cfg: ExperimentBase, coef: float, seed: int, out: Path) -> dict[str, Any]:
    """Train, timing it and counting its forward tokens; returns the run's cost and status (also
    written to ``out/train.json``; a finished run is not redone, see :func:`run_once`)."""
    from vlalign.experiments.common import run_once

    def train() -> dict[str, Any]:
        t0 = time.perf_counter()
        with TokenCounter(base.vocab_size) as counter:
            res = METHODS.get(method)(base, cfg, coef, seed, out)
        res.update({"seconds": round(time.perf_counter() - t0, 2), "forward_tokens": counter.tokens})
        if method in PAIR_METHODS:  # the pairs' sampling is part of their cost: charged in full to every run
            res["seconds"] = round(res["seconds"] + base.info["pair_sampling"]["seconds"], 2)
            res["forward_tokens"] += base.info["pair_sampling"]["forward_tokens"]
        return res

    return run_once(out, train)


# ------------------------------------------------------------------------------------------ measurement


def sequence_kl(logps: Any, ref_logps: Any, mask: Any) -> float:
    """Mean over answers of Σ_t mask·(log π − log π_ref): the k1 Monte-Carlo estimate of the sequence
    KL(π‖π_ref) from answers sampled by π. logps, ref_logps, mask: (N, T)."""
    seq = ((logps - ref_logps) * mask).sum(-1)  # (N,)
    return float(seq.mean())


def group_self_bleu(texts: list[str], k: int) -> float:
    """Mean over prompts of the self-BLEU of that prompt's K answers (rows g·K … g·K+K−1)."""
    from vlalign.evaluation.text_metrics import self_bleu

    groups = [texts[i : i + k] for i in range(0, len(texts), k)]
    return sum(self_bleu(g) for g in groups) / len(groups) if groups else float("nan")


def probe_samples(model: Any, processor: Any, reference: Any, prompts: list[Any], probe: ProbeConfig, seed: int) -> dict[str, float]:
    """Sample K answers per held-out prompt; gold reward, diversity and KL to ``reference``."""
    import torch

    from vlalign.data.collate import CollateConfig
    from vlalign.evaluation.text_metrics import distinct_n, mean_length
    from vlalign.rewards import build_source
    from vlalign.rollout.collect import sample_experience, score_experience, score_with
    from vlalign.rollout.config import RolloutConfig

    torch.manual_seed(seed)
    rcfg = RolloutConfig(num_samples=probe.samples_per_prompt, max_new_tokens=probe.max_new_tokens,
                         temperature=probe.temperature)  # fmt: skip
    exp = sample_experience(model, processor, prompts, rcfg, CollateConfig(max_length=160))
    m = score_experience(exp, model, reference, need_old_logprobs=True, need_reference=True, temperature=probe.temperature)
    gold, _ = score_with(build_source("shapes_rules"), exp, "gold")
    return {
        "gold_reward": float(gold.mean()),
        "sample_distinct_2": distinct_n(exp.texts, 2),
        "sample_self_bleu": group_self_bleu(exp.texts, probe.samples_per_prompt),
        "sample_entropy": m["policy/entropy"],  # mean token entropy at the sampled positions
        "kl_to_sft": sequence_kl(exp.old_logprobs, exp.ref_logprobs, exp.response_mask),
        "sample_length": mean_length(exp.texts),
    }


class Measurer:
    """Evaluates trained models against the SFT reference (loaded once) on fixed held-out prompts,
    on the GPU when there is one."""

    def __init__(self, base: Base, cfg: ExperimentBase) -> None:
        from vlalign.evaluation.evaluate import read_records
        from vlalign.experiments.common import device, with_absolute_images
        from vlalign.models.load import ModelConfig, load_model

        self.base, self.cfg, self.device = base, cfg, device()
        ref = load_model(ModelConfig(name_or_path=str(base.sft_model))).model
        self.reference = ref.eval().requires_grad_(False).to(self.device)
        recs = read_records(base.data_dir / "eval_captions.jsonl", cfg.probe.n_prompts)
        self.prompts = with_absolute_images(recs, base.data_dir)

    def __call__(self, model_dir: Path, out: Path) -> dict[str, float]:
        """Metrics of ``model_dir`` (reused from ``out/probe.json`` when a resumed run measured it already)."""
        from vlalign.evaluation.evaluate import EvalConfig, evaluate, write_outputs

        if (out / "probe.json").is_file() and (model_dir.parent / "train.json").is_file():
            return json.loads((out / "probe.json").read_text())
        from vlalign.models.load import ModelConfig, load_model

        t0 = time.perf_counter()
        cfg = self.cfg
        loaded = load_model(ModelConfig(name_or_path=str(model_dir)))
        model = loaded.model.to(self.device)
        ecfg = EvalConfig(tasks=cfg.eval_tasks, limit=cfg.eval_limit, seed=cfg.seed, generation=cfg.generation)
        metrics, ctx = evaluate(model, loaded.processor, self.base.data_dir, ecfg)
        write_outputs(out, metrics, ctx, {"model": str(model_dir), "data": str(self.base.data_dir)})
        metrics.update(probe_samples(model, loaded.processor, self.reference, self.prompts, cfg.probe, cfg.seed))
        metrics["time_measure_s"] = round(time.perf_counter() - t0, 1)
        (out / "probe.json").write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics
