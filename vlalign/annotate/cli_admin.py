"""`vlalign annotate user | migrate | import | export-tasks`: accounts, schema upgrades, other tools' files."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from vlalign.cli_common import fail

user_app = typer.Typer(help="Accounts of the labelling team (admin, reviewer, annotator).", no_args_is_help=True)
URL_OPTION = typer.Option("http://127.0.0.1:8765", "--url", help="address people open, for the invite link")
FORMAT_OPTION = typer.Option(..., "--format", "-f", help="label-studio | argilla")


def _store(store: Path | None, db: str | None):
    from vlalign.annotate.cli import open_store

    return open_store(store, db)


@user_app.command("add")
def user_add(
    name: str = typer.Argument(..., help="login name (letters, digits, . _ @ -)"),
    role: str = typer.Option("annotator", "--role", help="admin | reviewer | annotator"),
    store: Path | None = typer.Option(None, "--store", "-s"),
    db: str | None = typer.Option(None, "--db"),
    password_stdin: bool = typer.Option(False, "--password-stdin", help="read the password from stdin instead "
                                        "of making an invite link"),
    url: str = URL_OPTION,
) -> None:
    """Create an account; prints a one-time invite link (the person sets their own password there)."""
    from vlalign.annotate.review import NAME_RE

    if not NAME_RE.match(name):
        fail(f"{name!r}: 1-64 letters, digits, '.', '_', '@', '-'")
    st = _store(store, db)
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    try:
        token = st.add_user(name, role, password)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(f"added {role} {name}" + (f"; invite link (valid 7 days, once): {url.rstrip('/')}/invite#{token}"
                                         if token else ""))


@user_app.command("invite")
def user_invite(name: str, store: Path | None = typer.Option(None, "--store", "-s"),
                db: str | None = typer.Option(None, "--db"), url: str = URL_OPTION) -> None:
    """A new one-time invite link for an existing account (a forgotten password)."""
    try:
        token = _store(store, db).new_invite(name)
    except KeyError as exc:
        fail(str(exc))
    typer.echo(f"{url.rstrip('/')}/invite#{token}")


@user_app.command("list")
def user_list(store: Path | None = typer.Option(None, "--store", "-s"), db: str | None = typer.Option(None, "--db")) -> None:
    """Accounts, roles, and whose labels are disabled."""
    for u in _store(store, db).users():
        typer.echo("\t".join([u.name, u.role] + (["labels disabled"] if u.labels_disabled else [])))


@user_app.command("disable-labels")
def user_disable(name: str, store: Path | None = typer.Option(None, "--store", "-s"),
                 db: str | None = typer.Option(None, "--db"),
                 enable: bool = typer.Option(False, "--enable", help="count their labels again")) -> None:
    """Stop (or restart) counting an annotator's labels in queues, agreement and export."""
    try:
        _store(store, db).set_labels_disabled(name, not enable, None)
    except KeyError as exc:
        fail(str(exc))
    typer.echo(f"{name}: labels {'enabled' if enable else 'disabled'}")


def migrate(
    out: Path | None = typer.Option(None, "--out", "-o", help="project folder (annotate.sqlite inside)"),
    db: str | None = typer.Option(None, "--db", help="database URL instead of the folder's SQLite"),
    from_jsonl: Path | None = typer.Option(None, "--from-jsonl", help="a session folder from before the database "
                                           "(default: --out, when it holds annotations.jsonl)"),
) -> None:
    """Create or upgrade the database schema (Alembic); import a JSONL session from before the database."""
    from vlalign.annotate.database import sqlite_url
    from vlalign.annotate.migrate import migrate_jsonl_session
    from vlalign.annotate.store import Store

    if out is None and db is None:
        fail("give --out FOLDER or --db URL")
    store = Store.open(db or sqlite_url(out))
    typer.echo("schema is up to date")
    source = from_jsonl or (out if out is not None and (out / "annotations.jsonl").is_file() else None)
    if source is None:
        return
    try:
        report = migrate_jsonl_session(source, store)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"imported {report.items} items and {report.judgements} judgements from {source} "
               f"({report.skipped_existing} already there)")
    if report.torn_lines:
        typer.secho(f"warning: {len(report.torn_lines)} unreadable line(s) {report.torn_lines[:5]} (a torn write) "
                    "were not imported", fg="yellow", err=True)
    for name, token in report.invites.items():
        typer.echo(f"  account {name}: invite link http://127.0.0.1:8765/invite#{token}")


def export_tasks(
    out: Path = typer.Option(..., "--out", "-o", help="output file (.json for Label Studio, .jsonl for Argilla)"),
    fmt: str = FORMAT_OPTION,
    store: Path | None = typer.Option(None, "--store", "-s"),
    db: str | None = typer.Option(None, "--db"),
    image_url: str = typer.Option("", "--image-url", help="prefix for image URLs in the tasks (default: embed "
                                  "images as data: URIs)"),
) -> None:
    """Write the items as Label Studio tasks (+ its labelling config) or Argilla records."""
    from vlalign.annotate.interop import EXPORTERS

    try:
        written = EXPORTERS.get(fmt)(_store(store, db), out, image_url)
    except KeyError as exc:
        fail(str(exc))
    typer.echo("wrote " + ", ".join(str(p) for p in written))


def import_annotations(
    file: Path = typer.Argument(..., help="a completed export of Label Studio (JSON) or Argilla (JSON/JSONL)"),
    fmt: str = FORMAT_OPTION,
    store: Path | None = typer.Option(None, "--store", "-s"),
    db: str | None = typer.Option(None, "--db"),
) -> None:
    """Import completed annotations (pairwise choice, span corrections, ratings, safety) as judgements."""
    from vlalign.annotate.interop import IMPORTERS, InteropError

    try:
        report = IMPORTERS.get(fmt)(_store(store, db), file)
    except (KeyError, InteropError, FileNotFoundError) as exc:
        fail(str(exc))
    typer.echo(f"imported {report['judgements']} judgements from {file} ({report['skipped']} already there; "
               f"new accounts: {', '.join(report['new_users']) or 'none'})")


def register_admin(app: typer.Typer) -> None:
    """Add the admin commands to ``app`` (once, whoever asks first: the CLI or ``python -m vlalign.annotate``)."""
    if getattr(app, "_vlalign_admin", False):
        return
    app._vlalign_admin = True  # type: ignore[attr-defined]
    app.add_typer(user_app, name="user")
    app.command("migrate")(migrate)
    app.command("export-tasks")(export_tasks)
    app.command("import")(import_annotations)
