"""Generic pieces the seeds' experiments share: ground-truth comparison of answers, label agreement,
evaluation with a reference model, trainer configs from a stage budget, sample-efficiency plots.

WHY here and not in each recipe: every experiment compares *labels* against the Shapes ground
truth and *models* against a same-budget control, and those two measurements must mean the same
thing in every experiment's table.

Ground truth of an answer (:func:`gt_key`) is the judgement the CHAIR metric itself makes: the
distinct object types the answer claims (the eval parser :func:`caption_objects`) split into
hallucinated (absent from the scene) and correct. Answer A is better than B when it hallucinates
fewer types; with as many hallucinations, when it names more of the present types (recall).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vlalign.config import BaseConfig

# ------------------------------------------------------------------------------ ground truth + labels


def gt_key(response: str, scene: Mapping[str, Any]) -> tuple[int, int]:
    """(−#hallucinated types, #correct types): larger is better, compared lexicographically."""
    from vlalign.data.shapes.scene import objects_of
    from vlalign.evaluation.hallucination import caption_objects

    said = caption_objects(response)
    truth = set(objects_of(scene))
    return (-len(said - truth), len(said & truth))


def gt_preference(a: str, b: str, scene: Mapping[str, Any]) -> int:
    """+1 if the ground truth prefers ``a``, −1 if it prefers ``b``, 0 if it cannot tell them apart."""
    ka, kb = gt_key(a, scene), gt_key(b, scene)
    return (ka > kb) - (ka < kb)


@dataclass
class Agreement:
    """How often a labeller's preferred side is the ground-truth-better one.

    ``agreement`` = agree / (agree + disagree): pairs the ground truth cannot separate (``ties``) are
    left out of it and reported as ``gt_tie_rate`` — a labeller that spends its budget on such pairs
    wastes labels even though it is never "wrong" on them.
    """

    n_pairs: int
    agree: int
    disagree: int
    ties: int

    @property
    def agreement(self) -> float:
        decided = self.agree + self.disagree
        return self.agree / decided if decided else float("nan")

    @property
    def gt_tie_rate(self) -> float:
        return self.ties / self.n_pairs if self.n_pairs else float("nan")

    def to_dict(self) -> dict[str, float]:
        return {"n_pairs": self.n_pairs, "agree": self.agree, "disagree": self.disagree, "ties": self.ties,
                "agreement": self.agreement, "gt_tie_rate": self.gt_tie_rate}  # fmt: skip


def label_agreement(pairs: Sequence[Any]) -> Agreement:
    """Agreement of preference records (``chosen``, ``rejected``, ``meta["scene"]``) with the ground truth."""
    votes = []
    for i, p in enumerate(pairs):
        scene = (p.meta or {}).get("scene")
        if not scene:
            raise ValueError(f"label_agreement: pair {i} (id {p.id!r}) has no meta.scene; agreement needs the ground truth")
        votes.append(gt_preference(p.chosen, p.rejected, scene))
    return Agreement(len(votes), votes.count(1), votes.count(-1), votes.count(0))


# ------------------------------------------------------------------------------ training budgets


class Stage(BaseConfig):
    """One training stage's budget (the same fields for SFT, DPO, the control and reward models)."""

    steps: int = 60
    batch_size: int = 32
    learning_rate: float = 2e-4
    warmup_steps: int = 0
    lr_scheduler: str = "cosine"


def trainer_config(kind: str, stage: Stage, model: Mapping[str, Any], data_file: Path, out: Path, seed: int,
                   max_length: int = 160, **extra: Any) -> Any:  # fmt: skip
    """An :class:`SFTConfig` / :class:`DPOConfig` for one stage; ``model`` is the ``ModelConfig`` dict
    (``name_or_path`` plus lora / dtype / ... on real models)."""
    from vlalign.trainers.configs import DPOConfig, SFTConfig

    cls = {"sft": SFTConfig, "dpo": DPOConfig}[kind]
    return cls(output_dir=str(out), seed=seed, model=dict(model), data={"train": str(data_file), "max_length": max_length},
               per_device_batch_size=stage.batch_size, max_steps=stage.steps, learning_rate=stage.learning_rate,
               warmup_steps=stage.warmup_steps, lr_scheduler=stage.lr_scheduler, progress=False,
               save_merged=True, **extra)  # fmt: skip


def write_jsonl(records: Sequence[Any], path: Path) -> Path:
    """Canonical records → JSONL (parent folders created)."""
    from vlalign.data.records import to_dict

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


# ------------------------------------------------------------------------------ evaluation


def device() -> str:
    """Where experiments put models outside the trainers (sampling, scoring, eval): the GPU if any."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def evaluate_model(model_dir: Path, data_dir: Path, out: Path, eval_cfg: Any, ref_dir: Path | None = None,
                   model_cfg: Mapping[str, Any] | None = None) -> dict[str, float]:  # fmt: skip
    """Every configured eval task on ``model_dir``; with ``ref_dir`` the preference task scores the
    implicit reward against that reference (the SFT model), i.e. accuracy against ground-truth pairs."""
    import gc

    from vlalign.evaluation.evaluate import evaluate, write_outputs
    from vlalign.models.load import ModelConfig, load_model

    extra = {k: v for k, v in (model_cfg or {}).items() if k not in ("name_or_path", "lora")}
    loaded = load_model(ModelConfig(name_or_path=str(model_dir), **extra))
    loaded.model.to(device())
    ref = load_model(ModelConfig(name_or_path=str(ref_dir), **extra)).model.to(device()) if ref_dir is not None else None
    metrics, ctx = evaluate(loaded.model, loaded.processor, data_dir, eval_cfg, ref_model=ref)
    write_outputs(out, metrics, ctx, {"model": str(model_dir), "ref": str(ref_dir), "data": str(data_dir)})
    del loaded, ref, ctx
    gc.collect()
    return metrics


# ------------------------------------------------------------------------------ plots


def plot_vs_budget(curves: Mapping[str, Mapping[int, float]], metric: str, baseline: float | None = None,
                   controls: Mapping[str, Mapping[int, float]] | None = None) -> bytes:  # fmt: skip
    """One line per source of ``metric`` against the label budget (log x); the SFT start as a
    dashed line and same-budget controls as hollow markers. Returns PNG bytes."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    for i, (name, pts) in enumerate(curves.items()):
        xs = sorted(pts)
        line = ax.plot(xs, [pts[x] for x in xs], marker="o", label=name)[0]
        for x, y in sorted((controls or {}).get(name, {}).items()):
            ax.scatter([x], [y], facecolors="none", edgecolors=line.get_color(), s=70,
                       label="control (SFT on chosen)" if i == 0 else None)  # fmt: skip
    if baseline is not None:
        ax.axhline(baseline, ls="--", color="grey", label="SFT start")
    ax.set_xscale("log")
    ax.set_xlabel("labelled pairs (budget)")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


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


def start_experiment(threads: int | None, out_dir: str | Path) -> Path:
    """What every recipe does first: pin torch's thread count (a busy 2-core CPU runs tiny matmuls
    faster on one thread) and create the output folder."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    out = Path(out_dir)
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


def experiment_config(cls: type, default_config: Path, config: Path | None, overrides: list[str] | None, out: Path,
                      seed: int | None = None) -> Any:  # fmt: skip
    """The CLI prologue of every recipe: offline by default; ``--config`` (else the recipe's default YAML,
    when present) plus ``key=value`` overrides; ``--seed`` over the file's seed; the resolved config
    saved as ``out/config.yaml``."""
    from vlalign.cli_common import offline_by_default, resolve_config
    from vlalign.config import save_config

    offline_by_default()
    path = config if config is not None else (default_config if default_config.is_file() else None)
    cfg = resolve_config(cls, path, overrides)
    if seed is not None:
        cfg.seed = seed
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    return cfg


def written_line(out: Path, result: Mapping[str, Any]) -> str:
    """The last line every recipe prints: where its outputs are and how long it took."""
    return f"\nwrote {out / 'metrics.json'} and {out / 'report.html'} ({result['timing_s']['total']:.0f} s)"
