"""Recipes: the YAML configs shipped inside the package, found by name from any installation.

The repository's ``configs/`` folder is the source; the package reaches it as ``vlalign/recipes``
(a link in the source tree, real files in the wheel), so a checkout and an installed wheel read the
same files. WHY: a recipe's YAML is the only source of its settings. ``vlalign demo`` run from a
wheel must run the experiment ``configs/demo.yaml`` describes, and a recipe whose YAML cannot be
found is an error, never a silent fall-back to other values.

Names are paths below ``configs/`` without ``.yaml``: ``demo``, ``sft_tiny``, ``experiments/kl_sweep``,
``accelerate/ddp``. A bare file name that is unique (``kl_sweep``) and dashes for underscores
(``kl-sweep``, as the CLI spells experiments) work too.
"""

from __future__ import annotations

import difflib
from importlib.resources import files
from pathlib import Path

from vlalign.config import ConfigError

SUFFIX = ".yaml"


class RecipeError(ConfigError):
    """A recipe name that matches no packaged YAML, or an installation without its recipes."""


def recipes_root() -> Path:
    """The folder of packaged recipes; a missing one means a broken installation, said as such."""
    root = Path(str(files("vlalign") / "recipes"))
    if not root.is_dir():
        raise RecipeError(
            f"{root} does not exist: this vlalign installation lacks its recipes (vlalign/recipes/*.yaml). "
            "Reinstall vlalign (`pip install --force-reinstall vlalign`), or in a source checkout restore the "
            "link `vlalign/recipes -> ../configs` (`git checkout vlalign/recipes`)."
        )
    return root


def recipe_names() -> list[str]:
    """Every packaged recipe, e.g. ``["accelerate/ddp", ..., "demo", "experiments/kl_sweep", ...]``."""
    root = recipes_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def _normalise(name: str) -> str:
    name = name.strip().removeprefix("configs/").removesuffix(SUFFIX)
    return name.replace("-", "_")


def recipe_name(name: str) -> str:
    """The canonical name of ``name`` (``kl-sweep`` → ``experiments/kl_sweep``); unknown → error with hints."""
    known = recipe_names()
    wanted = _normalise(name)
    if wanted in known:
        return wanted
    by_stem = [k for k in known if k.rsplit("/", 1)[-1] == wanted]
    if len(by_stem) == 1:
        return by_stem[0]
    if len(by_stem) > 1:
        raise RecipeError(f"recipe name {name!r} is ambiguous: {', '.join(by_stem)}; use the full name")
    close = difflib.get_close_matches(wanted, known + [k.rsplit("/", 1)[-1] for k in known], n=3)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    raise RecipeError(f"no recipe named {name!r}.{hint} `vlalign config list` lists them.")


def recipe_path(name: str) -> Path:
    """The packaged YAML of recipe ``name``."""
    return recipes_root() / f"{recipe_name(name)}{SUFFIX}"


def config_source(config: str | Path) -> Path:
    """What a ``--config`` value points at: an existing file, else the packaged recipe of that name.

    ``configs/sft_tiny.yaml`` in a checkout is the file; after ``pip install vlalign`` (no ``configs/``
    folder) the same value, or just ``sft_tiny``, finds the packaged copy."""
    path = Path(config)
    if path.is_file():
        return path
    try:
        return recipe_path(str(config))
    except RecipeError as exc:
        raise RecipeError(f"config file {path} does not exist, and it names no packaged recipe: {exc}") from None
