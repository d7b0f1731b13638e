"""`vlalign tiny-model`: build a tiny random model of a real VLM architecture, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def tiny_model(
    out: Annotated[Path, typer.Option("--out", "-o", help="directory to save the model + processor into")],
    family: Annotated[str, typer.Option("--family", "-f", help="llava | qwen2_vl | idefics3 (alias smolvlm)")] = "llava",
    size: Annotated[str, typer.Option(
        "--size", help="tiny (seconds, <1M params) | small (~30M) | bench-mini (a 2B checkpoint's FLOP balance and "
        "image tokens; llava, qwen2_vl) | bench-vocab (the real vocabulary; llava, qwen2_vl)")] = "tiny",
    seed: Annotated[int, typer.Option("--seed", help="seed of the random initialisation")] = 0,
) -> None:
    """Build a randomly initialised model (+ tokenizer, image processor, chat template) and save it."""
    from vlalign.cli_common import fail, offline_by_default

    offline_by_default()
    from vlalign.models.tiny import TINY_FAMILIES, build_tiny, size_names, size_spec

    if family not in TINY_FAMILIES:
        try:
            TINY_FAMILIES.get(family)
        except KeyError as exc:
            fail(str(exc.args[0]))
    if size not in size_names():
        fail(f"unknown --size {size!r}; choose one of {', '.join(size_names())}")
    try:
        size_spec(family, size)
    except KeyError as exc:
        fail(str(exc.args[0]))
    path = build_tiny(family, out, size=size, seed=seed)
    import json

    info = json.loads((path / "vlalign_tiny.json").read_text())
    typer.echo(f"saved tiny {family} ({size}, {info['num_parameters']:,} parameters) to {path}")


def register(app: typer.Typer) -> None:
    app.command("tiny-model")(tiny_model)
