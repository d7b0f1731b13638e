"""`vlalign data ...` sub-commands (``data shapes`` here; other areas add theirs to ``data_app``)."""

from __future__ import annotations

from pathlib import Path

import typer

from vlalign.cli_common import fail

data_app = typer.Typer(help="Generate, validate and convert datasets.", no_args_is_help=True)


SHAPES_OUT_OPTION = typer.Option(..., "--out", "-o", help="output folder (created)")


@data_app.command("shapes")
def shapes(
    out: Path = SHAPES_OUT_OPTION,
    seed: int = typer.Option(0, "--seed", help="same seed → byte-identical files"),
    n_train: int = typer.Option(4000, "--n-train", help="training scenes"),
    n_eval: int = typer.Option(500, "--n-eval", help="held-out evaluation scenes"),
    bias: float = typer.Option(0.5, "--bias", help="P(caption adds the companion | trigger present)"),
    image_size: int = typer.Option(64, "--image-size", help="image side in pixels"),
    trigger: str = typer.Option("red circle", "--trigger", help="object whose presence triggers the bias"),
    companion: str = typer.Option("blue square", "--companion", help="object the biased captions add"),
) -> None:
    """Generate the synthetic Shapes benchmark (images + SFT, preference, POPE, safety, eval splits)."""
    import time

    from pydantic import ValidationError

    from vlalign.data.shapes.generate import ShapesConfig, generate_shapes

    try:
        cfg = ShapesConfig(seed=seed, n_train=n_train, n_eval=n_eval, bias=bias, image_size=image_size,
                           trigger=trigger, companion=companion)  # fmt: skip
    except ValidationError as exc:
        fail(f"invalid `data shapes` options: {exc}")
    t0 = time.perf_counter()
    manifest = generate_shapes(out, cfg)
    counts = ", ".join(f"{k} {v}" for k, v in manifest["counts"].items())
    typer.echo(f"wrote {manifest['n_images']} images and {counts} to {out} in {time.perf_counter() - t0:.1f}s")


@data_app.command("critiques")
def critiques_cmd(
    path: Path = typer.Argument(..., help="Shapes preference file (preference.jsonl, preference_eval.jsonl)"),
    out: Path = typer.Option(..., "--out", "-o", help="JSONL to write: the same rows with `critique` filled in"),
) -> None:
    """Write a critique of both answers of every Shapes pair, from the scene's ground truth (for `vlalign rm
    model.kind=critique`)."""
    import json

    from vlalign.data.shapes.critique import write_critique_file

    try:
        n = write_critique_file(path, out)
    except (OSError, json.JSONDecodeError, ValueError, TypeError) as exc:
        fail(f"{path}: {exc}")
    typer.echo(f"wrote {n} pairs with critiques to {out}")


def _format_options(items: list[str] | None) -> dict:
    from vlalign.config.base import ConfigError, parse_overrides

    try:
        return parse_overrides(items or [])
    except ConfigError as exc:
        fail(f"--option: {exc}")
        raise


FORMAT_OPTION = typer.Option(None, "--format", "-f", help="data format (auto-detected from field names if omitted)")
OPTION_OPTION = typer.Option(None, "--option", help="format option key=value, e.g. min_gap=1.5 (repeatable)")
SOURCE_ARGUMENT = typer.Argument(..., help="file, folder, glob, save_to_disk folder, Hub-layout folder or Hub id")
SPLIT_OPTION = typer.Option(None, "--split", help="split of a Hub dataset / Hub-layout folder (default: train)")
SUBSET_OPTION = typer.Option(None, "--subset", help="config name of a Hub dataset")
REVISION_OPTION = typer.Option(None, "--revision", help="Hub revision (branch, tag or commit)")
IMAGE_ROOT_OPTION = typer.Option(None, "--image-root", help="folder relative image paths resolve against")
NETWORK_OPTION = typer.Option(False, "--allow-network", help="download images given as http(s) URLs")
NUM_PROC_OPTION = typer.Option(None, "--num-proc", help="processes for the validation pass")


def _load_kwargs(split: str | None, subset: str | None, revision: str | None, image_root: str | None,
                 allow_network: bool, num_proc: int | None) -> dict:
    return {"split": split, "subset": subset, "revision": revision, "image_root": image_root,
            "allow_network": allow_network, "num_proc": num_proc}


def _explain(result) -> str:
    return "\n".join(f"format: {why}" for why in result.format_reasons.values())


@data_app.command("validate")
def validate_cmd(
    path: str = SOURCE_ARGUMENT,
    format: str = FORMAT_OPTION,
    report: Path = typer.Option(None, "--report", help="write the full JSON report here"),
    option: list[str] = OPTION_OPTION,
    show: int = typer.Option(10, "--show", help="how many problems to print"),
    no_images: bool = typer.Option(False, "--no-images", help="skip the image check"),
    split: str = SPLIT_OPTION,
    subset: str = SUBSET_OPTION,
    revision: str = REVISION_OPTION,
    image_root: str = IMAGE_ROOT_OPTION,
    allow_network: bool = NETWORK_OPTION,
    num_proc: int = NUM_PROC_OPTION,
    streaming: bool = typer.Option(False, "--streaming", help="one pass of constant memory (huge datasets)"),
) -> None:
    """Check EVERY row; exit 1 if any is bad (each problem: file, row, field, reason, fix)."""
    from vlalign.data.formats import FormatDetectionError
    from vlalign.data.validate import scan, write_report

    kw = _load_kwargs(split, subset, revision, image_root, allow_network, num_proc)
    try:
        result = scan(path, format, _format_options(option), check_images=not no_images, streaming=streaming, **kw)
    except (FormatDetectionError, FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc).strip('"'))
        raise
    if report is not None:
        write_report(result, report, path)
    typer.echo(_explain(result))
    typer.echo(f"{path} ({', '.join(sorted(set(result.formats.values()))) or 'no rows'}): {result.summary(show)}")
    if report is not None:
        typer.echo(f"report: {report}")
    if result.errors:
        raise typer.Exit(1)


CONVERT_TARGETS = {"jsonl": "records.jsonl", "parquet": "records.parquet", "disk": "dataset"}


@data_app.command("convert")
def convert_cmd(
    path: str = SOURCE_ARGUMENT,
    out: Path = typer.Option(..., "--out", "-o", help="output folder: the records + images/ (JSONL) + report.json"),
    format: str = FORMAT_OPTION,
    option: list[str] = OPTION_OPTION,
    skip_bad: bool = typer.Option(False, "--skip-bad-rows", "--skip-bad",
                                  help="convert the good rows, list the bad ones in OUT/report.json"),
    to: str = typer.Option("jsonl", "--to", help="jsonl (+ images/), parquet (images embedded) or disk "
                                                 "(a save_to_disk folder, OUT/dataset)"),
    split: str = SPLIT_OPTION,
    subset: str = SUBSET_OPTION,
    revision: str = REVISION_OPTION,
    image_root: str = IMAGE_ROOT_OPTION,
    allow_network: bool = NETWORK_OPTION,
    num_proc: int = NUM_PROC_OPTION,
) -> None:
    """Convert any supported format to canonical records: JSONL (image bytes written to OUT/images/ under
    their content hash), Parquet or a save_to_disk folder (images embedded)."""
    from vlalign.data.formats import FormatDetectionError
    from vlalign.data.io import write_records, write_records_table
    from vlalign.data.validate import DataError, load_records

    if to not in CONVERT_TARGETS:
        fail(f"--to {to!r}: use one of {', '.join(CONVERT_TARGETS)}")
    report = out / "report.json"
    kw = _load_kwargs(split, subset, revision, image_root, allow_network, num_proc)
    try:
        result = load_records(path, format, "skip" if skip_bad else "error", report, _format_options(option), **kw)
    except DataError as exc:
        fail(f"{exc}\n(pass --skip-bad-rows to convert only the good rows)", code=1)
        raise
    except (FormatDetectionError, FileNotFoundError, ValueError, KeyError) as exc:
        fail(str(exc).strip('"'))
        raise
    if to == "jsonl":
        target = write_records(result.records, out)
    else:
        target = write_records_table(result.records, out / CONVERT_TARGETS[to], "parquet" if to == "parquet" else "disk")
    typer.echo(_explain(result))
    typer.echo(f"wrote {len(result.records)} records to {target} ({result.n_bad_rows} bad rows, "
               f"{len(result.skipped)} skipped; report: {report})")


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
