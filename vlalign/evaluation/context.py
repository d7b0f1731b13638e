"""What every evaluation task shares: the config, the context a task runs in, and the task registry.

A *task* is a function ``task(ctx) -> {metric: value}`` registered in :data:`EVAL_TASKS`. It reads
its data from ``ctx.data_path()`` (the folder or file given for it), generates answers with
``ctx.generate``, stores the per-item values behind each rate in ``ctx.items`` (so every rate gets a
bootstrap interval, :mod:`vlalign.evaluation.items`), the rows worth reading in ``ctx.answers``,
and, for a number that is not a rate over items (a count, a corpus-level statistic), the reason it
has no interval in ``ctx.no_interval``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from vlalign.config import BaseConfig
from vlalign.data.records import Record, from_dict
from vlalign.evaluation.generate import GenerationConfig, generate_answers
from vlalign.evaluation.items import ItemValues
from vlalign.evaluation.report import read_metrics_jsonl
from vlalign.registry import Registry


class JudgeConfig(BaseConfig):
    """The judge that grades open answers (MMHal-Bench, the ``judge`` task, benchmark safety by judge).

    ``backend`` is a :data:`vlalign.rewards.judge.JUDGE_BACKENDS` name: ``openai`` (any OpenAI-compatible
    endpoint; ``backend_kwargs: {url, model, api_key_env, timeout, ...}``), ``hf`` (a local VLM;
    ``backend_kwargs: {model: PATH}``) or ``fixed`` (canned replies, for dry runs and tests)."""

    backend: str | None = Field(None, description="JUDGE_BACKENDS name; None = no judge configured")
    backend_kwargs: dict[str, Any] = Field(default_factory=dict)
    aspects: list[str] = Field(default_factory=lambda: ["helpfulness", "harmlessness", "faithfulness"],
                               description="graded aspects of the `judge` task (names in JUDGE_ASPECTS)")
    pairwise: bool = Field(True, description="also judge A-vs-B against the reference answers, both orders")
    reference_answers: str | None = Field(
        None, description="answers.jsonl of another `vlalign eval` run (the reference model); default: --ref generates them")


class TrustConfig(BaseConfig):
    """Calibration, sycophancy and consistency probes (``calibration``, ``sycophancy``, ``consistency``)."""

    n_bins: int = Field(10, ge=2, description="equal-width confidence bins of the ECE and the reliability diagram")
    yes_words: list[str] = Field(default_factory=lambda: ["Yes", "yes"])
    no_words: list[str] = Field(default_factory=lambda: ["No", "no"])
    perturbations: list[str] = Field(default_factory=lambda: ["gaussian_noise", "jpeg", "crop"],
                                     description="IMAGE_PERTURBATIONS names for the image-consistency probe")
    limit: int | None = Field(None, ge=1, description="probes per trust task (None = all)")


class EvalConfig(BaseConfig):
    """`vlalign eval` settings; ``model``/``data``/``out``/``ref`` may also come from the command line."""

    model: str | None = Field(None, description="policy model directory (or hub id)")
    data: str | None = Field(None, description="Shapes data folder (made by `vlalign data shapes`) or a benchmark folder")
    out: str | None = Field(None, description="output folder for metrics.json, summary.md, answers.jsonl")
    ref: str | None = Field(None, description="reference model: preference accuracy (implicit reward), judge pairwise")
    tasks: list[str] = Field(default_factory=lambda: ["chair", "pope", "preference", "safety"])
    task_data: dict[str, str] = Field(default_factory=dict, description="task → its own data path (default: `data`)")
    limit: int | None = Field(None, ge=1, description="use only the first N rows of each eval file")
    beta: float = Field(0.1, gt=0, description="β of the implicit reward β·(log π − log π_ref)")
    pref_batch_size: int = Field(16, ge=1, description="pairs per forward in the preference task")
    max_length: int = Field(256, ge=8, description="prompt + image tokens + response, preference task")
    dtype: str = Field("float32", description="model dtype (CPUs here have no fast bf16)")
    seed: int = 0
    n_boot: int = Field(2000, ge=100, description="bootstrap resamples per interval")
    generation: GenerationConfig = Field(default_factory=GenerationConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    trust: TrustConfig = Field(default_factory=TrustConfig)


class EvalDataError(ValueError):
    """The data folder lacks a file a task needs, or a row is unreadable; the message says which."""


@dataclass
class EvalContext:
    """What a task needs: the policy (+ optional reference), the data and the settings."""

    model: Any
    processor: Any
    data_dir: Path
    cfg: EvalConfig
    ref_model: Any = None
    answers: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # task -> rows for answers.jsonl
    items: dict[str, ItemValues] = field(default_factory=dict)  # metric -> per-item values (for its CI)
    no_interval: dict[str, str] = field(default_factory=dict)  # metric -> why it has no interval over items
    figures: dict[str, bytes] = field(default_factory=dict)  # caption -> PNG (reliability diagram, ...)
    task: str = ""  # the task being run (set by `evaluate`)
    ref_processor: Any = None

    def data_path(self) -> Path:
        """The data of the running task: ``cfg.task_data[task]`` when given, else ``data_dir``."""
        p = self.cfg.task_data.get(self.task)
        return Path(p) if p else self.data_dir

    def read(self, name: str) -> list[Record]:
        return read_records(self.data_path() / name, self.cfg.limit)

    def generate(self, records: list[Record], base_dir: str | Path | None = None) -> list[str]:
        base = str(base_dir) if base_dir is not None else str(self.data_path())
        return generate_answers(self.model, self.processor, records, self.cfg.generation, base, self.cfg.seed)

    def limited(self, rows: list[Any]) -> list[Any]:
        return rows[: self.cfg.limit] if self.cfg.limit is not None else rows


# name -> task(ctx) -> {metric: value}; a task returns {} when its data file is absent and optional.
EVAL_TASKS: Registry[Callable[[EvalContext], dict[str, float]]] = Registry("eval task")


def read_records(path: Path, limit: int | None = None) -> list[Record]:
    """Canonical JSONL → records; a broken line fails with file and line number."""
    if not path.is_file():
        raise EvalDataError(
            f"{path} does not exist; evaluation needs a Shapes data folder "
            "(make one with `vlalign data shapes --out DIR`) or a benchmark folder in its official layout "
            "(see docs/evaluation.md), or drop the task from `tasks`"
        )
    out: list[Record] = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                out.append(from_dict(json.loads(line)))
            except (json.JSONDecodeError, TypeError, KeyError) as exc:
                raise EvalDataError(f"{path}, line {line_no}: not a canonical record ({exc}); regenerate the file") from None
            if limit is not None and len(out) >= limit:
                break
    return out


def read_json(path: Path, what: str) -> Any:
    """A benchmark's JSON file, or a clear error naming it and what it should hold."""
    if not path.is_file():
        raise EvalDataError(f"{path} does not exist; {what}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{path}: not valid JSON ({exc}); {what}") from None


def read_json_lines(path: Path, what: str) -> list[dict[str, Any]]:
    """JSON Lines (one object per line; POPE's ``.json`` files are JSON Lines), errors by line number."""
    if not path.is_file():
        raise EvalDataError(f"{path} does not exist; {what}")
    try:
        return read_metrics_jsonl(path)
    except (ValueError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{exc}; expected {what}") from None


def require_keys(row: dict[str, Any], keys: tuple[str, ...], where: str) -> None:
    missing = [k for k in keys if k not in row]
    if missing:
        raise EvalDataError(f"{where}: missing field(s) {missing}; the official layout has {list(keys)}")
