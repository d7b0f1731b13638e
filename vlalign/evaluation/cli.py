"""`vlalign eval`: every metric of a model on a Shapes folder or on benchmarks in their official layouts
→ metrics.json (with 95% CIs) + items.json + summary.md + report.html; `vlalign eval compare RUN ...`:
one HTML report across evaluation runs."""

from __future__ import annotations

from pathlib import Path

import typer

from vlalign.cli_common import CONFIG_OPTION, OVERRIDES_ARG, fail, offline_by_default, resolve_config

MODEL_OPTION = typer.Option(None, "--model", "-m", help="model directory (or hub id) to evaluate")
DATA_OPTION = typer.Option(None, "--data", "-d", help="data folder/file; once for all tasks, or once per --task (in order)")
TASK_OPTION = typer.Option(None, "--task", "-t", help="task name (repeatable): chair, pope, preference, safety, amber, "
                           "mmhal, judge, calibration, sycophancy, consistency")
OUT_OPTION = typer.Option(None, "--out", "-o", help="output folder (for `eval compare`: the report folder)")
REF_OPTION = typer.Option(None, "--ref", help="reference model: preference accuracy by implicit reward; judge pairwise")


def pair_tasks(tasks: list[str], data: list[str]) -> tuple[str | None, dict[str, str]]:
    """(default data, task → data) from repeated ``--task``/``--data``: one --data serves every task,
    otherwise they pair up in order."""
    if not data:
        return None, {}
    if len(data) == 1:
        return data[0], {}
    if len(data) != len(tasks):
        raise ValueError(f"{len(tasks)} --task but {len(data)} --data: give one --data for all tasks or one per --task")
    return data[0], dict(zip(tasks, data))


def eval_command(
    model: str | None = MODEL_OPTION,
    data: list[str] | None = DATA_OPTION,
    task: list[str] | None = TASK_OPTION,
    out: Path | None = OUT_OPTION,
    ref: str | None = REF_OPTION,
    config: Path | None = CONFIG_OPTION,
    overrides: list[str] | None = OVERRIDES_ARG,
) -> None:
    """Generate answers and compute the metrics of each task (default: the Shapes tasks chair, pope,
    preference, safety). `vlalign eval compare RUN_A RUN_B ... --out DIR` compares finished runs."""
    offline_by_default()
    if overrides and overrides[0] == "compare":
        compare_runs(overrides[1:], out)
        return
    from vlalign.config import save_config
    from vlalign.evaluation.evaluate import EvalConfig, EvalDataError, evaluate, write_outputs

    cfg = resolve_config(EvalConfig, config, overrides)
    try:
        default_data, per_task = pair_tasks(list(task or []), list(data or []))
    except ValueError as exc:
        fail(str(exc))
        return
    if task:
        cfg.tasks = list(task)
    if per_task:
        cfg.task_data = {**cfg.task_data, **per_task}
    for key, value in (("model", model), ("data", default_data), ("out", out), ("ref", ref)):
        if value is not None:
            setattr(cfg, key, str(value))
    for key in ("model", "data", "out"):
        if getattr(cfg, key) is None:
            fail(f"--{key} is required (or set `{key}:` in the config file)")
    for path in {cfg.data, *cfg.task_data.values()}:
        if not Path(path).exists():
            fail(f"--data {path}: no such file or folder; make a Shapes folder with `vlalign data shapes --out {path}` "
                 "or see docs/evaluation.md for the benchmark layouts")

    import torch

    from vlalign.evaluation.evaluate import HEADLINE, ci_text
    from vlalign.evaluation.items import intervals
    from vlalign.evaluation.report import fmt_value, markdown_table
    from vlalign.models.load import ModelConfig, ModelLoadError, load_model

    torch.manual_seed(cfg.seed)
    try:
        policy = load_model(ModelConfig(name_or_path=cfg.model, dtype=cfg.dtype))
        reference = load_model(ModelConfig(name_or_path=cfg.ref, dtype=cfg.dtype)) if cfg.ref else None
    except ModelLoadError as exc:
        fail(str(exc))
        return
    try:
        metrics, ctx = evaluate(policy.model, policy.processor, cfg.data, cfg, reference.model if reference else None,
                                reference.processor if reference else None)
    except (EvalDataError, KeyError) as exc:
        fail(str(exc).strip('"'))
        return
    out_dir = write_outputs(cfg.out, metrics, ctx, {"model": cfg.model, "data": cfg.data, "task_data": cfg.task_data,
                                                    "ref": cfg.ref})
    save_config(cfg, out_dir / "config.yaml")
    cis = {k: v.to_dict() for k, v in intervals(ctx.items, n_boot=cfg.n_boot, seed=cfg.seed).items()}
    shown = [k for k in HEADLINE if k in metrics] or sorted(k for k in metrics if not k.startswith("time_"))[:20]
    rows = [["metric", "value", "95% CI"], *[[k, fmt_value(metrics[k]), ci_text(cis.get(k))] for k in shown]]
    typer.echo(markdown_table(rows))
    typer.echo(f"wrote {out_dir / 'metrics.json'}, {out_dir / 'summary.md'} and {out_dir / 'report.html'}")


def compare_runs(runs: list[str], out: Path | None) -> None:
    from vlalign.evaluation.compare import CompareError, write_comparison

    if len(runs) < 2 or out is None:
        fail("usage: vlalign eval compare RUN_A RUN_B [RUN_C ...] --out DIR (folders written by `vlalign eval` or "
             "`vlalign redteam`)")
        return
    try:
        path = write_comparison([Path(r) for r in runs], out)
    except CompareError as exc:
        fail(str(exc))
        return
    typer.echo(f"wrote {path}")


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)
