"""Online / iterative DPO (RLAIF-V; "iterative DPO" of Xiong et al. 2024), optionally followed by RL.

One command, ``rounds`` rounds of::

    sample K answers to this round's prompts from the CURRENT policy      (vlalign.rollout)
    → score each answer with any reward source (score only)               (vlalign.rewards registry)
    → pairs by a named rule (best vs worst of the K, ...)                  (PAIRINGS)
    → DPO from the current policy, which is also this round's reference   (vlalign.trainers.dpo)
    → the next round's policy

and then, with ``then``, an RL stage (GRPO / PPO / RLOO) from the last round's model on the same
reward: the hybrid "DPO warm start, then RL" recipe.

WHY rounds: offline DPO learns from the SFT model's samples only; once the policy has moved, its own
mistakes are no longer the ones in the pairs. Sampling again from the current policy puts the
preference signal on the errors it makes now (RLAIF-V's on-policy feedback loop).

Resume (``resume: true``), per round and within a round: a round's sampled answers and pairs are
written atomically once sampled (sampling is seeded per (seed, round, chunk), so a round killed while
sampling samples the same answers again), each round's DPO run checkpoints every ``dpo.save_steps``
and resumes from its newest checkpoint, and a round whose DPO run wrote ``summary.json`` is done. Each
round loads its policy from the previous round's saved model, in an uninterrupted run as in a resumed
one, so the two give bit-identical weights. One process: the sampling runs outside accelerate.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, ValidationError, field_validator, model_validator

from vlalign.config import BaseConfig, save_config
from vlalign.config.base import deep_merge
from vlalign.data.images import normalize_ref
from vlalign.data.io import write_jsonl
from vlalign.data.records import PreferenceRecord, to_dict
from vlalign.models.load import ModelConfig
from vlalign.registry import Registry
from vlalign.rewards.composite import RewardSourceConfig
from vlalign.rewards.label import select_pairs
from vlalign.rollout.config import RolloutConfig
from vlalign.trainers.run import _Interrupt

# ------------------------------------------------------------------------------------------ pairing

# rule name -> (scores of one prompt's distinct answers, min_margin) -> [(winner, loser) indices]
PAIRINGS: Registry[Callable[[list[float], float], list[tuple[int, int]]]] = Registry("pairing rule")
for _mode in ("best_worst", "all_pairs"):  # vlalign label's rules (RLAIF-V: best vs worst of the K)
    PAIRINGS.register(_mode)(lambda scores, min_margin, _m=_mode: select_pairs(scores, _m, min_margin))


@PAIRINGS.register("best_vs_rest")
def best_vs_rest(scores: list[float], min_margin: float) -> list[tuple[int, int]]:
    """The best answer against every answer it beats by more than ``min_margin`` (K−1 pairs at most)."""
    if len(scores) < 2:
        return []
    best = max(range(len(scores)), key=lambda i: scores[i])
    return [(best, j) for j in range(len(scores)) if scores[best] - scores[j] > min_margin]


# ------------------------------------------------------------------------------------------ config

# RL algorithm of the ``then`` stage -> (module, config class); trained by vlalign.trainers.rl_common.run_rl
RL_CONFIGS = {"grpo": ("vlalign.trainers.grpo", "GRPOConfig"), "dr_grpo": ("vlalign.trainers.pg", "PGConfig"),
              "rloo": ("vlalign.trainers.rloo", "RLOOConfig"), "ppo": ("vlalign.trainers.ppo", "PPOConfig")}  # fmt: skip
PG_FAMILY = ("grpo", "dr_grpo", "rloo")


class FollowUpRL(BaseConfig):
    """The RL stage after the DPO rounds (hybrid DPO → RL): same reward, from the last round's model."""

    algorithm: str = Field("grpo", description="grpo | dr_grpo | rloo | ppo")

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, name: str) -> str:
        if name not in RL_CONFIGS:
            raise ValueError(f"must be one of {', '.join(RL_CONFIGS)}; got {name!r}")
        return name
    config: dict[str, Any] = Field(
        default_factory=dict, description="keys of that trainer's config (max_steps, per_device_batch_size, "
        "rollout, kl_coef, learning_rate, replay, save_steps ...); output_dir, seed, model, reward and data.train "
        "come from this run unless given here (data.train: e.g. prompts the DPO rounds did not use)",
    )


class IterativeDPOConfig(BaseConfig):
    """Every setting of an iterative DPO run (``configs/iterative_dpo_tiny.yaml``)."""

    output_dir: str
    seed: int = 0
    model: ModelConfig = Field(..., description="the starting policy (round 0 samples from it)")
    prompts: str = Field(..., description="prompt records (any supported format); their meta reaches the reward")
    format: str | None = Field(None, description="data format of `prompts`; None = detect")
    rounds: int = Field(..., ge=1, description="sample → label → DPO rounds")
    prompts_per_round: int = Field(..., ge=1, description="prompts sampled per round (a seeded order; wraps around)")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="K = rollout.num_samples answers per prompt")
    reward: RewardSourceConfig = Field(..., description="scores every answer (verifier, CLIP, judge, learned RM ...)")
    pairing: str = Field("best_worst", description="rule that turns K scores into pairs (PAIRINGS)")
    min_margin: float = Field(0.0, ge=0, description="keep a pair only if its score gap is above this")
    sampling_batch_size: int = Field(32, ge=1, description="prompts per generate call")
    max_length: int = Field(512, ge=8, description="prompt + image tokens budget of the sampling")
    dpo: dict[str, Any] = Field(
        ..., description="each round's DPO config (vlalign dpo keys: max_steps per round, loss, beta, "
        "per_device_batch_size, learning_rate, save_steps, replay ...); output_dir, seed, model and data.train "
        "are set per round",
    )
    then: FollowUpRL | None = Field(None, description="an RL stage after the last round (hybrid DPO → RL)")
    resume: bool = Field(False, description="continue the run in output_dir (per round and within a round)")
    overwrite: bool = Field(False, description="a fresh run in a folder with rounds deletes them first")

    @field_validator("pairing")
    @classmethod
    def _known_pairing(cls, name: str) -> str:
        """An unknown rule fails when the config is read (``pairing``: did-you-mean), not after a round of sampling."""
        return PAIRINGS.known(name)

    @model_validator(mode="after")
    def _stages_valid(self) -> IterativeDPOConfig:
        """Each round's DPO config and the RL stage's are built (and so checked) when the config is read;
        their errors keep their keys, under ``dpo.`` and ``then.config.``."""
        if self.dpo.get("max_steps") is None:
            raise nested_error(type(self).__name__, ("dpo", "max_steps"), self.dpo,
                               "DPO steps per round must be set: it is the round's budget")  # fmt: skip
        stages = ((("dpo",), self.dpo, lambda: round_dpo_config(self, 0, Path("model"), Path("pairs.jsonl"))),
                  (("then", "config"), self.then and self.then.config, lambda: self.then and rl_stage_config(self, Path("model"))))  # fmt: skip
        for where, section, build in stages:
            try:
                build()
            except ValidationError as err:  # a section-wide error shows the section as written, not the merged one
                raise ValidationError.from_exception_data(type(self).__name__, [
                    {"type": e["type"], "loc": (*where, *e["loc"]), "input": e["input"] if e["loc"] else section,
                     **({"ctx": e["ctx"]} if "ctx" in e else {})} for e in err.errors()]) from None  # fmt: skip
        return self


def nested_error(title: str, loc: tuple[str, ...], value: Any, message: str) -> ValidationError:
    """A validation error at ``loc`` (a key inside a dict section), so the config error names that key."""
    return ValidationError.from_exception_data(title, [{"type": "value_error", "loc": loc, "input": value,
                                                        "ctx": {"error": ValueError(message)}}])  # fmt: skip


def round_dpo_config(cfg: IterativeDPOConfig, r: int, policy: Path, pair_file: Path) -> Any:
    """Round ``r``'s DPO config: ``cfg.dpo`` from ``policy`` on ``pair_file``, resumable in its folder."""
    from vlalign.trainers.configs import DPOConfig

    fixed = {"output_dir": str(round_dir(cfg, r) / "dpo"), "seed": cfg.seed, "resume": True,
             "model": {**cfg.model.model_dump(), "name_or_path": str(policy)}, "data": {"train": str(pair_file)}}  # fmt: skip
    return DPOConfig.model_validate(deep_merge(cfg.dpo, fixed))


def rl_stage_config(cfg: IterativeDPOConfig, policy: Path) -> Any:
    """The ``then`` stage's RL config from ``policy`` on the run's reward (and prompts unless given)."""
    assert cfg.then is not None
    module, name = RL_CONFIGS[cfg.then.algorithm]
    cls = getattr(importlib.import_module(module), name)
    # data.train absolute: the RL loader resolves image paths against the data file's folder a second time
    # when the file is named relative to the working directory
    defaults = {"output_dir": str(Path(cfg.output_dir) / "rl"), "seed": cfg.seed, "data": {"train": str(Path(cfg.prompts).resolve())},
                "reward": cfg.reward.model_dump(), **({"advantage_estimator": cfg.then.algorithm}
                                                       if cfg.then.algorithm in PG_FAMILY else {})}  # fmt: skip
    fixed = {"model": {**cfg.model.model_dump(), "name_or_path": str(policy)}, "resume": True}
    return cls.model_validate(deep_merge(deep_merge(defaults, cfg.then.config), fixed))


def round_dir(cfg: IterativeDPOConfig, r: int) -> Path:
    return Path(cfg.output_dir) / f"round_{r}"


# ------------------------------------------------------------------------------------------ sampling


@dataclass
class ScoredGroup:
    """One prompt's K sampled answers and their scores."""

    record: Any
    texts: list[str]
    scores: list[float]


def sample_scored(model: Any, processor: Any, records: Sequence[Any], rollout: RolloutConfig, source: Any,
                  collate_cfg: Any, seed_parts: Sequence[Any], batch_size: int) -> list[ScoredGroup]:  # fmt: skip
    """K answers per record from ``model``, each scored by ``source``. Chunk c of ``batch_size`` records is
    sampled on its own RNG stream ``stream_seed(*seed_parts, c)``: the answers depend only on the seed
    parts, the chunking and the weights, so a resumed round samples exactly what the killed one did."""
    from vlalign.rollout.collect import sample_experience, score_with, seeded, stream_seed

    groups: list[ScoredGroup] = []
    k = rollout.num_samples
    was_training = model.training
    model.eval()
    try:
        for c, start in enumerate(range(0, len(records), batch_size)):
            chunk = list(records[start : start + batch_size])
            with seeded(stream_seed(*seed_parts, c)):
                exp = sample_experience(model, processor, chunk, rollout, collate_cfg)
            scores, _ = score_with(source, exp, "reward")  # (len(chunk)·K,) grouped by prompt
            groups += [ScoredGroup(rec, exp.texts[g * k : (g + 1) * k], scores[g * k : (g + 1) * k].tolist())
                       for g, rec in enumerate(chunk)]  # fmt: skip
    finally:
        model.train(was_training)
    return groups


def distinct_answers(group: ScoredGroup) -> list[int]:
    """Indices of the group's non-empty answers, first copy of each text only (a text never meets itself)."""
    seen: set[str] = set()
    out = []
    for i, t in enumerate(group.texts):
        key = t.strip()
        if key and key not in seen:
            seen.add(key)
            out.append(i)
    return out


def group_pairs(group: ScoredGroup, rule: str, min_margin: float, source: str) -> tuple[list[PreferenceRecord], str | None]:
    """Preference records of one prompt by pairing rule ``rule``; or none and the reason."""
    uniq = distinct_answers(group)
    if len(uniq) < 2:
        return [], "fewer than 2 distinct non-empty answers"
    winners = PAIRINGS.get(rule)([group.scores[i] for i in uniq], min_margin)
    if not winners:
        return [], "no score gap above min_margin"
    rec, out = group.record, []
    for w, lo in winners:
        i, j = uniq[w], uniq[lo]
        meta = {**(rec.meta or {}), "source_id": rec.id, "reward_source": source, "chosen_score": group.scores[i],
                "rejected_score": group.scores[j]}  # fmt: skip
        out.append(PreferenceRecord(f"{rec.id}_k{i}_k{j}", list(rec.images), rec.prompt, group.texts[i].strip(),
                                    group.texts[j].strip(), margin=group.scores[i] - group.scores[j], meta=meta))  # fmt: skip
    return out, None


def absolute_images(records: Sequence[Any]) -> list[Any]:
    """Image paths → absolute, so the rounds' pair files load from any folder. The loader joins a relative
    path to the data file's folder, relative to the working directory when that folder is given relatively."""
    out, here = list(records), Path.cwd()
    for r in out:  # the loaded sequence may build its records anew on each access: change the list's own
        r.images = [normalize_ref(p, here) if isinstance(p, str) else p for p in r.images]
    return out


def round_prompts(n: int, rounds_before: int, per_round: int, seed: int) -> list[int]:
    """Prompt rows of a round: positions ``rounds_before·per_round …`` of a seeded order of the n rows,
    a new seeded order for each pass over them (every row once per pass)."""
    rows = []
    for pos in range(rounds_before * per_round, (rounds_before + 1) * per_round):
        epoch, i = divmod(pos, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7_919 + epoch))
        rows.append(int(perm[i]))
    return rows


def write_samples(groups: Sequence[ScoredGroup], path: Path) -> None:
    write_jsonl(({"prompt_id": g.record.id, "k": k, "text": t, "score": s}
                 for g in groups for k, (t, s) in enumerate(zip(g.texts, g.scores))), path)  # fmt: skip


# ------------------------------------------------------------------------------------------ the loop


def label_round(cfg: IterativeDPOConfig, r: int, policy: Path, records: list[Any], source: Any) -> dict[str, Any]:
    """Round ``r``'s sampling and labelling (skipped when its files exist): ``samples.jsonl`` (every answer
    and its score), ``pairs.jsonl`` and ``label_summary.json`` (written last: it marks the round labelled)."""
    from vlalign.data.collate import CollateConfig
    from vlalign.models.load import load_model

    folder = round_dir(cfg, r)
    done = folder / "label_summary.json"
    if done.is_file():
        return json.loads(done.read_text())
    t0 = time.perf_counter()
    loaded = load_model(cfg.model.model_copy(update={"name_or_path": str(policy), "lora": cfg.model.lora.model_copy(
        update={"enabled": False})}))  # fmt: skip
    rows = round_prompts(len(records), r, cfg.prompts_per_round, cfg.seed)
    chunk = [records[i] for i in rows]
    groups = sample_scored(loaded.model, loaded.processor, chunk, cfg.rollout, source,
                           CollateConfig(max_length=cfg.max_length, max_pixels=cfg.model.max_pixels),
                           (cfg.seed, "iterative_dpo", r), cfg.sampling_batch_size)  # fmt: skip
    del loaded
    pairs, reasons = [], {}
    for g in groups:
        got, why = group_pairs(g, cfg.pairing, cfg.min_margin, cfg.reward.name)
        pairs += got
        if why:
            reasons[why] = reasons.get(why, 0) + 1
    write_samples(groups, folder / "samples.jsonl")
    write_jsonl((to_dict(p) for p in pairs), folder / "pairs.jsonl")
    scores = torch.tensor([s for g in groups for s in g.scores])
    summary = {"round": r, "policy": str(policy), "prompts": len(groups), "samples": int(scores.numel()),
               "pairs": len(pairs), "prompts_without_pair": reasons, "score_mean": float(scores.mean()),
               "score_std": float(scores.std(unbiased=False)),
               "best_of_k_mean": float(sum(max(g.scores) for g in groups) / len(groups)),
               "mean_margin": float(sum(p.margin for p in pairs) / len(pairs)) if pairs else 0.0,
               "seconds": round(time.perf_counter() - t0, 2)}  # fmt: skip
    tmp = done.with_suffix(".tmp")  # atomic: written, then renamed into place
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(done)
    return summary


def round_done(cfg: IterativeDPOConfig, r: int) -> bool:
    return (round_dir(cfg, r) / "dpo" / "summary.json").is_file()


def train_round(cfg: IterativeDPOConfig, r: int, policy: Path, n_pairs: int, stop_after: int | None) -> tuple[Path, dict[str, Any]]:
    """Round ``r``'s DPO from ``policy`` on its pairs (resumed from its newest checkpoint when one exists).
    Returns (the round's model, its summary); a round without pairs keeps ``policy``."""
    from vlalign.trainers.dpo import train_dpo

    out = round_dir(cfg, r) / "dpo"
    if round_done(cfg, r):
        return out / "final", json.loads((out / "summary.json").read_text())
    dpo_cfg = round_dpo_config(cfg, r, policy, round_dir(cfg, r) / "pairs.jsonl")
    batch = dpo_cfg.per_device_batch_size * dpo_cfg.gradient_accumulation_steps
    if n_pairs < batch:  # nothing (or too little) to prefer: the policy goes on unchanged, and the summary says so
        return policy, {"steps": 0, "skipped": f"{n_pairs} pairs, fewer than one DPO batch ({batch})"}
    return out / "final", train_dpo(dpo_cfg, stop_after=stop_after)


def steps_left(cfg: IterativeDPOConfig, r: int) -> int:
    """DPO steps round ``r`` still has to run: 0 when done, else its budget minus its newest checkpoint's step."""
    from vlalign.trainers.checkpoint import checkpoint_dirs

    if round_done(cfg, r):
        return 0
    saved = checkpoint_dirs(round_dir(cfg, r) / "dpo")
    return int(cfg.dpo["max_steps"]) - (saved[-1][0] if saved else 0)


def open_iterative(cfg: IterativeDPOConfig) -> Path:
    """The output folder: a fresh run refuses a folder with rounds unless ``overwrite``; a resumed one
    refuses a changed config (the rounds done would belong to another run)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise RuntimeError("iterative DPO runs in one process (its sampling runs outside accelerate); launch it "
                           "without accelerate / torchrun")  # fmt: skip
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = sorted(out.glob("round_*")) + ([out / "rl"] if (out / "rl").exists() else [])
    saved = out / "config.yaml"
    if cfg.resume and saved.is_file():
        import yaml

        old = {k: v for k, v in (yaml.safe_load(saved.read_text()) or {}).items() if k not in ("resume", "overwrite")}
        new = {k: v for k, v in cfg.model_dump(mode="json").items() if k not in ("resume", "overwrite")}
        if old != new:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise RuntimeError(f"resume of {out} refused: the config differs from the run's ({', '.join(changed)}); "
                               "resume with its config (config.yaml there) or start over with overwrite=true")  # fmt: skip
    elif started and not cfg.resume:
        if not cfg.overwrite:
            raise RuntimeError(f"{out} holds rounds of an earlier run ({', '.join(p.name for p in started[:3])}); set "
                               "resume=true to continue it, overwrite=true to delete them, or choose another output_dir")  # fmt: skip
        for p in [*started, out / "final", out / "summary.json"]:
            if p.is_symlink() or p.is_file():
                p.unlink()
            elif p.is_dir():
                shutil.rmtree(p)
    save_config(cfg, saved)
    return out


def link_final(out: Path, model: Path) -> Path:
    """``out/final`` → the run's last model (a relative link when inside ``out``)."""
    final = out / "final"
    if final.is_symlink() or final.exists():
        final.unlink() if final.is_symlink() else shutil.rmtree(final)
    target = model.resolve()
    try:
        final.symlink_to(target.relative_to(out.resolve()), target_is_directory=True)
    except ValueError:
        final.symlink_to(target, target_is_directory=True)
    return final


def train_iterative_dpo(cfg: IterativeDPOConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Every round (sample → label → DPO), then the ``then`` RL stage; returns the run summary.

    ``stop_after`` (tests, fault injection): a simulated kill after that many DPO steps of this call,
    counted over the rounds it trains."""
    from vlalign.data.validate import load_records
    from vlalign.rewards import build_source

    out = open_iterative(cfg)
    records = absolute_images(load_records(cfg.prompts, format=cfg.format).records)
    if not records:
        raise ValueError(f"{cfg.prompts}: no prompt records; point `prompts` at prompt rows (e.g. Shapes eval_captions.jsonl)")
    source = build_source(cfg.reward)
    policy, rounds = Path(cfg.model.name_or_path), []
    budget = stop_after
    for r in range(cfg.rounds):
        label = label_round(cfg, r, policy, records, source)
        left = steps_left(cfg, r)
        kill = budget if budget is not None and budget < left else None
        if kill == 0:  # the kill falls between this round's labelling and its DPO
            raise _Interrupt(f"stopped after {stop_after} DPO steps (simulated kill)")
        policy, dpo = train_round(cfg, r, policy, label["pairs"], kill)
        budget = None if budget is None else budget - left
        rounds.append({**label, "dpo_steps": dpo.get("steps", 0), "dpo_skipped": dpo.get("skipped")})
    rl = None
    if cfg.then is not None:
        from vlalign.trainers.rl_common import run_rl

        rl_cfg = rl_stage_config(cfg, policy)
        done = Path(rl_cfg.output_dir) / "summary.json"
        rl = json.loads(done.read_text()) if done.is_file() else run_rl(rl_cfg, cfg.then.algorithm)
        policy = Path(rl_cfg.output_dir) / "final"
        rl = {**{k: rl.get(k) for k in ("steps", "stop_reason")}, "algorithm": cfg.then.algorithm,
              "samples": rl_cfg.max_steps * rl_cfg.per_device_batch_size * rl_cfg.rollout.num_samples}  # fmt: skip
    samples = sum(x["samples"] for x in rounds) + (rl["samples"] if rl else 0)
    summary = {"rounds": rounds, "rl": rl, "samples": samples, "labels": samples,
               "dpo_steps": sum(x["dpo_steps"] for x in rounds), "final": str(link_final(out, policy))}  # fmt: skip
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
