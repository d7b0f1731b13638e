"""The small base every experiment recipe stands on: its config comes from its YAML recipe, a stage's
budget is one type, a trainer config is built by one function, a tiny model by one builder, and what a
comparison starts from (data, SFT model, prompts, pairs) is one record, saved and reloaded the same way.

WHY one base: the experiments compare methods against controls. If two recipes built their trainer
configs, models or base differently, a difference between their tables could come from the plumbing
instead of the method. The recipes (demo, kl-sweep, dpo-vs-rl, reward-sources, safe-rlhf) only say
*what* to run; how a stage turns into a trainer run is written once, here.
"""

from __future__ import annotations

import functools
import importlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self, TypeVar

import yaml
from pydantic import Field, ValidationError

from vlalign.config import BaseConfig, ConfigError, save_config
from vlalign.config.base import deep_merge, format_validation_error, parse_overrides
from vlalign.data.records import to_dict
from vlalign.data.shapes.generate import ShapesConfig, generate_shapes
from vlalign.recipes import config_source, recipe_path
from vlalign.registry import Registry

R = TypeVar("R", bound="RecipeConfig")
Out = TypeVar("Out")

# ------------------------------------------------------------------------------------------ configs


class RecipeConfig(BaseConfig):
    """An experiment's config. Its top-level keys have no defaults in code: they come from the YAML
    recipe named by ``recipe`` (``vlalign config show NAME`` prints it merged), so the packaged YAML is
    the one place a recipe's settings live; sections may keep documented defaults for keys they omit."""

    recipe: ClassVar[str]

    @classmethod
    def from_recipe(cls, config: str | Path | None = None, overrides: Sequence[str] | Mapping[str, Any] = (),
                    seed: int | None = None) -> Self:  # fmt: skip
        """The packaged recipe (or the ``config`` file / recipe name, which then replaces it whole) with
        ``overrides`` on top: ``["dpo.beta=0.2"]`` as on the command line, or a nested dict."""
        path = recipe_path(cls.recipe) if config is None else config_source(config)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        extra = parse_overrides(list(overrides)) if not isinstance(overrides, Mapping) else dict(overrides)
        data = deep_merge(data, {**extra, **({"seed": seed} if seed is not None else {})})
        try:
            return cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(recipe_error(err, cls, path)) from None


def recipe_error(err: ValidationError, cls: type[RecipeConfig], path: Path) -> str:
    """The validation error of a recipe as the user needs it: missing keys named with the way to get a
    complete file, a whole-config rule (equal budgets ...) as its own sentence, the rest as usual."""
    errors = err.errors()
    missing = [".".join(map(str, e["loc"])) for e in errors if e["type"] == "missing"]
    if missing:
        return (f"invalid config ({path}): missing key(s) {', '.join(f'`{m}`' for m in missing)}. A recipe file lists "
                f"every top-level key; start from the packaged one: `vlalign config show {cls.recipe} > my.yaml`.")
    rules = [str(e["msg"]).removeprefix("Value error, ") for e in errors if not e["loc"]]
    if rules:
        return f"invalid config ({path}): " + "; ".join(rules)
    return format_validation_error(err, cls, str(path))


class ModelSize(BaseConfig):
    """Dimensions of a recipe's tiny model (see :class:`vlalign.models.tiny.SizeSpec`)."""

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
    """One supervised or preference training stage's budget (SFT, DPO, the control, reward models)."""

    steps: int = Field(..., ge=1)
    batch_size: int = Field(..., ge=1)
    learning_rate: float = Field(..., gt=0)
    warmup_steps: int = Field(0, ge=0)
    lr_scheduler: str = "cosine"

    def trainer_values(self) -> dict[str, Any]:
        """The stage as trainer-config keys."""
        return {"per_device_batch_size": self.batch_size, "max_steps": self.steps, "learning_rate": self.learning_rate,
                "warmup_steps": self.warmup_steps, "lr_scheduler": self.lr_scheduler}  # fmt: skip


class DPOStage(Stage):
    """A DPO stage; the same-budget control trains its steps, batch and learning rate as plain SFT."""

    loss: str = "dpo"
    beta: float = Field(0.1, gt=0)
    sft_weight: float = Field(0.0, ge=0, description="+ this × NLL of chosen (the control trains this term alone)")
    replay_yes_no: int = Field(0, ge=0, description="SFT yes/no rows replayed beside the pairs, in DPO and the "
                               "control alike (trainers' `replay`); 0 = off")  # fmt: skip
    replay_weight: float = Field(1.0, ge=0)


class RLStage(BaseConfig):
    """One RL run's budget: ``steps`` rollouts of ``prompts_per_step`` × ``num_samples`` answers, one
    policy update per rollout unless ``extra`` says otherwise."""

    steps: int = Field(..., ge=1, description="rollouts (= policy updates with ppo_epochs=num_minibatches=1)")
    prompts_per_step: int = Field(..., ge=1)
    num_samples: int = Field(..., ge=1, description="K answers per prompt (GRPO's group needs K ≥ 2)")
    learning_rate: float = Field(..., gt=0)
    max_new_tokens: int = Field(40, ge=1)
    temperature: float = Field(1.0, gt=0)
    kl_coef: float | None = Field(None, ge=0, description="KL coefficient; None = the experiment sets it (kl-sweep, dpo-vs-rl)")
    replay_yes_no: int = Field(0, ge=0, description="SFT yes/no rows replayed beside each update (PPO-ptx); 0 = off")
    replay_weight: float = Field(1.0, ge=0)
    extra: dict[str, Any] = Field(default_factory=dict, description="any other key of the trainer's config")

    def trainer_values(self) -> dict[str, Any]:
        """The budget as RL trainer-config keys (constant learning rate: an RL run has no fixed horizon)."""
        return {"per_device_batch_size": self.prompts_per_step, "max_steps": self.steps, "learning_rate": self.learning_rate,
                "lr_scheduler": "constant",
                "rollout": {"num_samples": self.num_samples, "max_new_tokens": self.max_new_tokens,
                            "temperature": self.temperature}}  # fmt: skip


class TinyRecipe(RecipeConfig):
    """What a recipe on a tiny random model of a real architecture declares: seed, size and data."""

    seed: int = Field(..., description="data, model init, training order and sampling")
    family: str = Field(..., description="tiny model family: llava, qwen2_vl, idefics3")
    threads: int | None = Field(..., ge=1, description="torch CPU threads; null = torch's default")
    model: ModelSize
    data: ShapesConfig


# ------------------------------------------------------------------------------------------ builders

# trainer kind -> (module, config class); every stage of every recipe becomes one of these configs.
TRAINER_CONFIGS: Registry[tuple[str, str]] = Registry("trainer")
TRAINER_CONFIGS.register("sft")(("vlalign.trainers.configs", "SFTConfig"))
TRAINER_CONFIGS.register("dpo")(("vlalign.trainers.configs", "DPOConfig"))
TRAINER_CONFIGS.register("grpo")(("vlalign.trainers.grpo", "GRPOConfig"))
TRAINER_CONFIGS.register("ppo")(("vlalign.trainers.ppo", "PPOConfig"))
TRAINER_CONFIGS.register("safe_ppo")(("vlalign.trainers.safe_ppo", "SafePPOConfig"))
TRAINER_CONFIGS.register("reward_model")(("vlalign.trainers.reward_model", "RewardModelConfig"))


def trainer_class(kind: str) -> Any:
    module, name = TRAINER_CONFIGS.get(kind)
    return getattr(importlib.import_module(module), name)


def trainer_config(kind: str, out: Path, seed: int, model: Mapping[str, Any], data_file: Path, budget: Stage | RLStage,
                   max_length: int = 160, **values: Any) -> Any:  # fmt: skip
    """The trainer config of one stage: ``model`` is the ``ModelConfig`` section (``name_or_path``, plus
    freeze / lora / dtype ... on real models), ``budget`` gives steps, batch and learning rate, ``values``
    any other key of that trainer's config. Merged models are saved (LoRA: ``final/`` beside ``adapter/``),
    so every stage leaves a model the next stage and the evaluator load the same way."""
    base = {"output_dir": str(out), "seed": seed, "model": dict(model), "data": {"train": str(data_file), "max_length": max_length},
            "progress": False, "save_merged": True, **budget.trainer_values()}  # fmt: skip
    return trainer_class(kind).model_validate(deep_merge(base, values))


def build_data_and_model(cfg: TinyRecipe, out: Path, clock: StageClock) -> tuple[Path, Path]:
    """What a tiny recipe starts from: its Shapes data (``out/data``, the recipe's seed) and a random tiny
    model of its size (``out/base_model``); returns both folders."""
    t0 = time.perf_counter()
    data = out / "data"
    generate_shapes(data, cfg.data.model_copy(update={"seed": cfg.seed}))
    clock("data", t0)
    t0 = time.perf_counter()
    model = build_tiny_model(cfg.family, cfg.model, cfg.data.image_size, cfg.seed, out / "base_model")
    clock("model", t0)
    return data, model


def build_tiny_model(family: str, size: ModelSize, image_size: int, seed: int, out: Path) -> Path:
    """A random tiny model of ``family`` at ``size``, saved (model + processor) like ``vlalign tiny-model``."""
    import torch

    from vlalign.models.tiny import TINY_FAMILIES, SizeSpec

    spec = SizeSpec(**size.model_dump(), image_size=image_size)
    with torch.random.fork_rng(devices=[]):  # seeded initialisation; the caller's RNG stays as it was
        torch.manual_seed(seed)
        model, processor = TINY_FAMILIES.get(family)(spec, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


# ------------------------------------------------------------------------------------------ the base


@dataclass
class Base:
    """What every arm of a comparison starts from: the data, the SFT model (also the KL reference), the
    RL training prompts and, for the pair methods, the on-policy pairs."""

    data_dir: Path
    sft_model: Path
    prompt_file: Path
    pair_file: Path | None = None
    vocab_size: int = 0
    info: dict[str, Any] = field(default_factory=dict)  # pair stats, timings, sampling cost, SFT targets
    pairs: list[Any] = field(default_factory=list)  # the records of pair_file (absolute image paths)


BASE_FILE = "base.json"


def save_base(base: Base, out: Path) -> Base:
    """Write ``out/base.json`` so a later experiment can start from this base (``base_from=out``)."""
    paths = {k: None if getattr(base, k) is None else str(Path(getattr(base, k)).resolve())
             for k in ("data_dir", "sft_model", "prompt_file", "pair_file")}  # fmt: skip
    (out / BASE_FILE).write_text(json.dumps({**paths, "vocab_size": base.vocab_size, "info": base.info}, indent=2) + "\n")
    return base


def load_base(folder: str | Path) -> Base:
    """The :class:`Base` an earlier run wrote. WHY: a second experiment then compares its methods from
    the very same SFT model and pairs, and skips the minutes of building them again."""
    from vlalign.evaluation.evaluate import read_records

    path = Path(folder) / BASE_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist; base_from must name the --out folder of a finished demo or experiment run"
        )
    saved = json.loads(path.read_text())
    info = saved.get("info", {k: v for k, v in saved.items() if k not in ("data_dir", "sft_model", "prompt_file")})
    pair_file = Path(saved["pair_file"]) if saved.get("pair_file") else None
    pairs = read_records(pair_file) if pair_file else []
    for rec in pairs:  # relative paths are relative to the run's working directory
        rec.images = [str(Path(p).resolve()) if isinstance(p, str) else p for p in rec.images]
    return Base(Path(saved["data_dir"]), Path(saved["sft_model"]), Path(saved["prompt_file"]), pair_file,
                int(saved.get("vocab_size", 0)), {**info, "base_from": str(folder)}, pairs)  # fmt: skip


# ------------------------------------------------------------------------------------------ run helpers


def write_jsonl(records: Sequence[Any], path: Path) -> Path:
    """Canonical records → JSONL (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(to_dict(r)) + "\n")
    return path


def with_absolute_images(records: Sequence[Any], base: Path) -> list[Any]:
    """Relative image paths → absolute, so records can be written anywhere and still load. ``base`` is
    resolved first: a relative ``--out`` (runs/demo) must not leave paths relative to the working directory."""
    base = Path(base).resolve()
    for r in records:
        r.images = [str(base / p) if isinstance(p, str) and not Path(p).is_absolute() else p for p in r.images]
    return list(records)


def run_once(out: Path, train: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``train()``'s summary, written to ``out/train.json``; a run whose ``train.json`` and ``final/`` model
    both exist is not redone (its summary comes back with ``reused: True``), so running an interrupted
    experiment again with the same ``--out`` continues where it stopped."""
    done = out / "train.json"
    if done.is_file() and (out / "final").is_dir():
        return {**json.loads(done.read_text()), "reused": True}
    info = train()
    done.write_text(json.dumps(info, indent=2) + "\n")
    return info


def keeps_global_state(run: Callable[..., Out]) -> Callable[..., Out]:
    """For a recipe's ``run_*`` function: a recipe pins torch's thread count (``threads``) and its stages
    seed the random generators; called from a user's program it hands the process back as it found it
    (thread count, deterministic flag, ``random`` / numpy / torch generators restored)."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> Out:
        from vlalign.trainers.common import GlobalTorchState

        saved = GlobalTorchState()
        try:
            return run(*args, **kwargs)
        finally:
            saved.restore()

    return wrapper


def start_experiment(threads: int | None, out_dir: str | Path) -> Path:
    """What every recipe does first: pin torch's thread count (a busy 2-core CPU runs tiny matmuls
    faster on one thread) and create the output folder (returned absolute: files written below hold
    paths that must not depend on the working directory)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    return out


class StageClock:
    """Wall-clock seconds per named stage of a recipe, logged as each stage ends (``metrics.json``'s
    ``timing_s``)."""

    def __init__(self, tag: str, log: Any = print) -> None:
        self.tag, self.log = tag, log
        self.timing: dict[str, float] = {}

    def __call__(self, name: str, t0: float) -> None:
        self.timing[name] = round(time.perf_counter() - t0, 1)
        self.log(f"[{self.tag}] {name}: {self.timing[name]:.1f} s")


def experiment_config(cls: type[R], config: str | Path | None, overrides: Sequence[str] | None, out: Path,
                      seed: int | None = None) -> R:  # fmt: skip
    """The CLI prologue of every recipe: its packaged YAML (or ``--config``), ``key=value`` overrides,
    ``--seed``; the resolved config saved as ``out/config.yaml``. Bad config → exit 2 with the message."""
    from vlalign.cli_common import fail, offline_by_default

    offline_by_default()
    try:
        cfg = cls.from_recipe(config, overrides or [], seed=seed)
    except ConfigError as exc:
        fail(str(exc))
        raise  # unreachable: fail() exits
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return cfg


def written_line(out: Path, result: Mapping[str, Any]) -> str:
    """The last line every recipe prints: where its outputs are and how long it took."""
    return f"\nwrote {out / 'metrics.json'} and {out / 'report.html'} ({result['timing_s']['total']:.0f} s)"
