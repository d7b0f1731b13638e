"""Model cards and uploads of finished runs: ``final/`` (the full or merged model) and ``adapter/`` (a
LoRA adapter) get a README.md model card filled from the run — base model, data, the resolved config,
the run's metrics and the machine — and, with ``hub.push_to_hub``, go to ``hub.hub_model_id``.

Layout on the hub: ``final/`` at the repository's root (``from_pretrained(repo_id)``), ``adapter/`` in
its ``adapter`` folder (``PeftModel.from_pretrained(base, repo_id, subfolder="adapter")``); a run
without ``final/`` (a 4-bit base, never merged) puts its adapter at the root.

WHY a card from the run: a model on a hub with an empty card cannot be reproduced or judged. The card
states what a reader needs to do both, and it is written even when nothing is pushed, so a run folder
copied anywhere still says what it is. The upload is huggingface_hub's own (``create_repo`` +
``upload_folder``); ``hub.endpoint`` points it at any hub that speaks the same API.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import HfApi, ModelCard, ModelCardData
from pydantic import Field, model_validator

from vlalign import __version__
from vlalign.config import BaseConfig
from vlalign.machine import machine_line

CARD = "README.md"
FOLDERS = ("final", "adapter")  # what a run saves (vlalign.trainers.checkpoint.save_final)


class HubConfig(BaseConfig):
    """The ``hub`` section of every trainer config. The token comes from ``HF_TOKEN`` or
    ``huggingface-cli login``, never from a config file (config.yaml is saved beside the outputs)."""

    push_to_hub: bool = Field(False, description="upload final/ and adapter/ with their model card when the run ends")
    hub_model_id: str | None = Field(None, description="repository to upload to, e.g. user/qwen2vl-dpo-shapes")
    private: bool | None = Field(None, description="create the repository private (null = the hub's default)")
    revision: str | None = Field(None, description="branch to commit to (null = main)")
    commit_message: str = Field("vlalign: upload the trained model", description="commit message of the upload")
    endpoint: str | None = Field(None, description="hub URL (null = HF_ENDPOINT or huggingface.co)")

    @model_validator(mode="after")
    def _needs_a_repo(self) -> HubConfig:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("hub.push_to_hub is true but hub.hub_model_id is not set; add e.g. hub.hub_model_id=user/my-model")
        return self


class HubPushError(RuntimeError):
    """The upload failed; the run itself is saved, and the message says how to push it again."""


def _is_local(name: str | None) -> bool:
    return bool(name) and Path(str(name)).exists()


def _last_logged(output_dir: Path) -> dict[str, Any]:
    """The last row of the run's ``metrics.jsonl`` (the latest logged training metrics), {} if none."""
    path = output_dir / "metrics.jsonl"
    rows = [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    return json.loads(rows[-1]) if rows else {}


def model_card(cfg: Any, output_dir: Path, summary: Mapping[str, Any], kind: str, repo_id: str | None = None) -> ModelCard:
    """The card of ``output_dir/<kind>`` (``final`` or ``adapter``) from the run's config and metrics."""
    trainer = type(cfg).__name__.removesuffix("Config").lower()
    loss = getattr(cfg, "loss", None)
    base = cfg.model.name_or_path
    data = cfg.data.train
    meta = ModelCardData(
        library_name="peft" if kind == "adapter" else "transformers",
        base_model=None if _is_local(base) else base,  # a hub id only: a local folder means nothing on a hub
        datasets=None if _is_local(data) or "/" not in str(data) else [data],
        pipeline_tag="image-text-to-text",
        tags=["vlalign", trainer, *([loss] if loss else [])],
    )
    title = repo_id or output_dir.name
    what = "LoRA adapter" if kind == "adapter" else "model"
    logged = {k: v for k, v in _last_logged(output_dir).items() if isinstance(v, (int, float))}
    config_yaml = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    body = f"""
# {title}

A vision-language {what} trained with vlalign {__version__}: `{trainer}`
{f"(loss `{loss}`) " if loss else ""}from `{base}`{" (a local folder when the run was made)" if _is_local(base) else ""}.

## Data

Training data: `{data}`{f" (format `{cfg.data.format}`)" if getattr(cfg.data, "format", None) else ""}, prompts and
answers up to {cfg.data.max_length} tokens{f", first {cfg.data.limit} rows" if cfg.data.limit else ""}.

## Metrics

Run summary: `{json.dumps({k: v for k, v in summary.items() if k != "saved"})}`.
Last logged training metrics (step {logged.get("step", "–")}):

```json
{json.dumps(logged, indent=2)}
```

Measured on: {machine_line()}.

## Training config

The resolved config of the run (`config.yaml`); `vlalign {trainer.replace("_", "-")} --config config.yaml` repeats it.

```yaml
{config_yaml}```
"""
    return ModelCard(f"---\n{meta.to_yaml()}\n---\n{body}")


def write_cards(cfg: Any, output_dir: Path, summary: Mapping[str, Any]) -> list[Path]:
    """A model card in each of ``final/`` and ``adapter/`` that the run saved; returns the folders."""
    repo_id = cfg.hub.hub_model_id if getattr(cfg, "hub", None) else None
    folders = [output_dir / k for k in FOLDERS if (output_dir / k).is_dir()]
    for folder in folders:
        model_card(cfg, output_dir, summary, folder.name, repo_id).save(folder / CARD)
    return folders


def push_run(cfg: Any, output_dir: str | Path, summary: Mapping[str, Any]) -> dict[str, str]:
    """The end of every run (:func:`vlalign.trainers.run.finish_run`): write the model cards, then, with
    ``cfg.hub.push_to_hub``, upload. Returns {folder: url of its commit} ({} when nothing is pushed)."""
    out = Path(output_dir)
    write_cards(cfg, out, summary)
    return upload_run(out, cfg.hub) if cfg.hub.push_to_hub else {}


def upload_run(output_dir: str | Path, hub: HubConfig) -> dict[str, str]:
    """Upload ``final/`` and ``adapter/`` of a saved run (cards included) to ``hub.hub_model_id``."""
    out = Path(output_dir)
    folders = [out / k for k in FOLDERS if (out / k).is_dir()]
    if not folders:
        raise HubPushError(f"{out}: the run saved neither final/ nor adapter/, so there is nothing to push")
    if not hub.hub_model_id:
        raise HubPushError("no repository to push to: set hub.hub_model_id (e.g. hub.hub_model_id=user/my-model)")
    api = HfApi(endpoint=hub.endpoint)
    pushed: dict[str, str] = {}
    try:
        api.create_repo(hub.hub_model_id, private=hub.private, exist_ok=True)
        for folder in folders:
            root = folder.name == "final" or not (out / "final").is_dir()
            info = api.upload_folder(repo_id=hub.hub_model_id, folder_path=folder, path_in_repo="" if root else folder.name,
                                     commit_message=hub.commit_message, revision=hub.revision)  # fmt: skip
            pushed[folder.name] = str(info.commit_url)
    except Exception as exc:  # network, auth, offline mode: the run is saved, say how to retry
        raise HubPushError(
            f"uploading {out} to {hub.hub_model_id} failed ({type(exc).__name__}: {exc}). The trained model is saved in "
            f"{out}; push it again with `vlalign push {out}` once the cause is fixed."
        ) from exc
    return pushed
