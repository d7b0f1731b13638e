"""`vlalign annotate serve | export | agreement` (+ `user`, `migrate`, `import`, `export-tasks` in cli_admin).

A project lives in a database: ``--out DIR`` means ``DIR/annotate.sqlite`` (SQLite, WAL), ``--db URL``
any SQLAlchemy URL, e.g. ``postgresql+psycopg://labels:PASSWORD@db.internal/labels``.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vlalign.cli_common import fail

annotate_app = typer.Typer(help="Collect human preference labels in a web app for a labelling team.",
                           no_args_is_help=True)

DATA_OPTION = typer.Option(None, "--data", "-d", help="candidate pairs: preference rows or rows with 'responses' "
                           "(omit to resume the project)")
OUT_OPTION = typer.Option(None, "--out", "-o", help="project folder: holds annotate.sqlite unless --db is given")
STORE_OPTION = typer.Option(None, "--store", "-s", help="project folder (its annotate.sqlite)")
DB_OPTION = typer.Option(None, "--db", help="database URL (default: sqlite in the project folder); "
                         "e.g. postgresql+psycopg://user:password@host/dbname")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
SCORER_OPTION_OPTION = typer.Option(None, "--scorer-option", help="key=value for the scorer (repeatable)")
SCORES_OPTION = typer.Option(None, "--scores", help="JSONL {item_id, scores: [r_first, r_second]} for active")
EXPORT_OUT_OPTION = typer.Option(..., "--out", "-o", help="output JSONL (canonical records)")
ALLOWED_HOST_OPTION = typer.Option(None, "--allowed-host", help="a name this app is reached by (repeatable); "
                                   "requests with any other Host header are refused")
LEARN_OPTION_OPTION = typer.Option(None, "--learn-option", help="key=value for the reward-model retraining "
                                   "(RewardModelConfig keys, e.g. max_steps=20; repeatable)")


def database_url(folder: Path | None, db: str | None) -> str:
    from vlalign.annotate.database import sqlite_url

    if db:
        return db
    if folder is None:
        fail("give the project: --out/--store FOLDER (SQLite inside it) or --db URL")
    if (folder / "annotations.jsonl").is_file() and not (folder / "annotate.sqlite").is_file():
        fail(f"{folder} is a labelling session from before the database; convert it once with: "
             f"vlalign annotate migrate --out {folder}")
    return sqlite_url(folder)


def open_store(folder: Path | None, db: str | None):
    from vlalign.annotate.store import Store

    url = database_url(folder, db)
    store = Store.open(url)
    if store.settings() is None:
        fail(f"{url}: no labelling project there (start one with `vlalign annotate serve --data FILE`)")
    return store


def _scorer(name: str | None, options: list[str] | None, scores: Path | None, store, folder: Path):
    from vlalign.annotate.queue import reward_source_scorer, scores_file_scorer

    if scores is not None:
        return scores_file_scorer(scores)
    if name is None:
        return None
    import vlalign.rewards  # noqa: F401  (registers the built-in reward sources)
    from vlalign.config.base import ConfigError, parse_overrides
    from vlalign.rewards.base import REWARD_SOURCES

    try:
        kwargs = parse_overrides(options or [])
        paths = store.image_files(folder / "image_cache")
        return reward_source_scorer(REWARD_SOURCES.get(name)(**kwargs), lambda h: str(paths[h]))
    except (KeyError, ConfigError, TypeError) as exc:
        fail(f"--scorer {name}: {exc}")


@annotate_app.command("serve")
def serve(
    out: Path | None = OUT_OPTION,
    db: str | None = DB_OPTION,
    data: Path | None = DATA_OPTION,
    port: int = typer.Option(8765, "--port", help="0 = any free port (printed)"),
    host: str = typer.Option("127.0.0.1", "--host", help="bind address; anything but loopback needs --allowed-host"),
    allowed_host: list[str] | None = ALLOWED_HOST_OPTION,
    behind_proxy: str | None = typer.Option(None, "--behind-proxy", help="address of the trusted reverse proxy "
                                            "(its X-Forwarded-* headers are used; cookies become Secure)"),
    threads: int = typer.Option(16, "--threads", help="request threads"),
    strategy: str = typer.Option("random", "--strategy", help="random | overlap | active"),
    labels_per_item: int = typer.Option(0, "--labels-per-item", help="votes wanted per item (default: 2 for overlap, else 1)"),
    seed: int = typer.Option(0, "--seed", help="seeds the left/right layout and the random order"),
    aspects: str = typer.Option("correctness,helpfulness", "--aspects", help="comma-separated rating aspects ('' = none)"),
    gold: Path | None = typer.Option(None, "--gold", help="gold items: preference rows whose chosen is the known answer"),
    gold_every: int = typer.Option(0, "--gold-every", help="every N-th item an annotator gets is a gold item (0 = none)"),
    scorer: str | None = typer.Option(None, "--scorer", help="reward source for --strategy active (e.g. a learned RM)"),
    scorer_option: list[str] | None = SCORER_OPTION_OPTION,
    scores: Path | None = SCORES_OPTION,
    learn_every: int = typer.Option(0, "--learn-every", help="retrain a reward model every N new labels and "
                                    "re-rank the active queue with it (0 = off)"),
    learn_model: str | None = typer.Option(None, "--learn-model", help="backbone of the retrained reward model"),
    learn_option: list[str] | None = LEARN_OPTION_OPTION,
    skip_bad_rows: bool = typer.Option(False, "--skip-bad-rows", help="serve the valid rows of a file with bad ones "
                                       "(listed in OUT/data_report.json) instead of stopping"),
) -> None:
    """Start the labelling app (waitress); every judgement is committed to the database before it is acknowledged."""
    from vlalign.annotate.app import AppConfig, create_app
    from vlalign.annotate.server import make_server, run
    from vlalign.annotate.session import open_project
    from vlalign.data.validate import DataError

    folder = out or Path("runs/annotate")
    url = database_url(out, db)
    k = labels_per_item or (2 if strategy in ("overlap", "round_robin") else 1)
    hosts = tuple(allowed_host or ()) + (LOOPBACK if host in LOOPBACK or host in ("0.0.0.0", "::") else (host,))
    if host not in LOOPBACK and not allowed_host:
        fail(f"--host {host} exposes the app: name the host people use with --allowed-host NAME")
    if learn_every and not learn_model:
        fail("--learn-every needs --learn-model (a model folder, e.g. one built by `vlalign model tiny`)")
    try:
        project = open_project(url, data, strategy, k, seed, None, [a.strip() for a in aspects.split(",") if a.strip()],
                               "skip" if skip_bad_rows else "error", gold, gold_every, learning=bool(learn_every),
                               report=folder / "data_report.json" if skip_bad_rows else None,
                               make_scorer=lambda st: _scorer(scorer, scorer_option, scores, st, folder))
        if project.queue.scorer is not None:
            project.queue.uncertainties()  # score every item now: errors show before anyone labels
    except (DataError, ValueError, KeyError, FileNotFoundError) as exc:
        fail(str(exc))
    if project.settings.get("bad_rows"):
        typer.secho(f"warning: skipped {project.settings['bad_rows']} bad rows of {data} (see {folder}/data_report.json)",
                    fg="yellow", err=True)
    base = f"http{'s' if behind_proxy else ''}://{hosts[0]}{'' if behind_proxy else f':{port}'}"
    if not project.store.users():
        token = project.store.add_user("admin", "admin")
        typer.echo(f"first start: the admin sets a password at {base}/invite#{token}")
    config = AppConfig(allowed_hosts=hosts, secure_cookies=bool(behind_proxy))
    if learn_every:
        from vlalign.annotate.learner import Learner

        learner = Learner(project, folder / "learner", learn_model, learn_every, learn_option or [])
        config.on_judgement = learner.notify
        learner.start()
    p = project.queue.progress()
    typer.echo(f"{p['items']} items, {p['votes']} judgements so far; database {url.split('@')[-1]}")
    run(make_server(create_app(project, config), host, port, threads, config.max_body, behind_proxy))


def _weights(store, min_gold_accuracy: float | None, weight_by_gold: bool):
    from vlalign.annotate.quality import annotator_report, annotator_weights

    disabled = {u.name for u in store.users() if u.labels_disabled}
    report = annotator_report(store.items(), store.judgements(include_disabled=True), disabled)
    return annotator_weights(report, min_gold_accuracy, weight_by_gold), report


@annotate_app.command("export")
def export(
    store: Path | None = STORE_OPTION,
    db: str | None = DB_OPTION,
    out: Path = EXPORT_OUT_OPTION,
    kind: str = typer.Option("preference", "--kind", help="preference | ranked"),
    min_votes: int = typer.Option(1, "--min-votes", help="items with fewer votes are left out"),
    corrected_pairs: bool = typer.Option(False, "--corrected-pairs", help="also write RLHF-V pairs (corrected vs original)"),
    min_gold_accuracy: float | None = typer.Option(None, "--min-gold-accuracy", help="leave out annotators whose "
                                                   "accuracy on gold items is below this (or unmeasured)"),
    weight_by_gold: bool = typer.Option(False, "--weight-by-gold", help="weight each vote by its annotator's gold accuracy"),
) -> None:
    """Majority-vote the judgements into canonical preference (or ranked) records (+ OUT.report.json)."""
    from vlalign.annotate.export import export_preferences, export_ranked, store_images, write_export

    if kind not in ("preference", "ranked"):
        fail(f"--kind {kind!r}: use 'preference' or 'ranked'")
    st = open_store(store, db)
    weights, _quality = _weights(st, min_gold_accuracy, weight_by_gold)
    items, judgements = st.items(), st.judgements(include_disabled=True)
    if kind == "preference":
        records, report = export_preferences(items, judgements, min_votes, corrected_pairs, weights)
    else:
        records, report = export_ranked(items, judgements, min_votes, weights)
    report["weights"] = weights
    write_export(records, out, store_images(st))
    report_path = out.with_suffix(".report.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    excluded = report.get("excluded_annotators") or []
    typer.echo(f"wrote {len(records)} {kind} records to {out} ({len(report['ties'])} ties, "
               f"{report['unlabelled']} unlabelled items, {len(excluded)} annotators left out; details in {report_path})")


@annotate_app.command("agreement")
def agreement(
    store: Path | None = STORE_OPTION,
    db: str | None = DB_OPTION,
    as_json: bool = typer.Option(False, "--json", help="print the full report (per item, per pair, per annotator) as JSON"),
) -> None:
    """Agreement (raw, Fleiss' κ, Krippendorff's α, Cohen's κ per pair) and quality per annotator."""
    from vlalign.annotate.agreement import agreement_report

    st = open_store(store, db)
    gold = {it.item_id for it in st.items() if it.gold is not None}
    report = agreement_report([j for j in st.judgements() if j.item_id not in gold])
    _w, report["annotators"] = _weights(st, None, False)
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    o = report["overall"]
    typer.echo(f"{o['n_items_labelled']} items labelled by {o['n_annotators']} annotators; "
               f"{o['n_items_multi']} with >= 2 labels")
    if o.get("note"):
        typer.echo(o["note"])
    else:
        typer.echo(f"raw agreement {o['raw_agreement']:.3f}, Fleiss' kappa {o['fleiss_kappa']}, "
                   f"Krippendorff's alpha {o['krippendorff_alpha']}")
        for pair in report["pairs"]:
            a, b = pair["annotators"]
            typer.echo(f"  {a} vs {b}: {pair['n_items']} shared items, agreement {pair['raw_agreement']:.3f}, "
                       f"Cohen's kappa {pair['cohen_kappa']}")
    for name, row in report["annotators"].items():
        g, m = row["gold"], row["majority"]
        gold_text = f"gold {g['accuracy']:.2f} [{g['ci95'][0]:.2f}, {g['ci95'][1]:.2f}] on {g['n']}" if g["n"] else "no gold"
        maj = f"{m['rate']:.2f} on {m['n']}" if m["n"] else "-"
        typer.echo(f"  {name}: {row['labels']} labels, {gold_text}, agrees with majority {maj}"
                   f"{' (labels disabled)' if row['labels_disabled'] else ''}")


def register(app: typer.Typer) -> None:
    from vlalign.annotate.cli_admin import register_admin

    register_admin(annotate_app)
    app.add_typer(annotate_app, name="annotate")
