"""The annotate commands a team runs: accounts, migration of a JSONL session, export with quality
thresholds, agreement, Label Studio / Argilla files, and the first start of `serve`."""

from __future__ import annotations

import json
import subprocess
import sys

from annotate_support import PASSWORD, wait_for_line
from typer.testing import CliRunner

from vlalign.annotate.cli import annotate_app
from vlalign.annotate.cli_admin import register_admin
from vlalign.annotate.judgements import Judgement
from vlalign.annotate.session import open_project
from vlalign.data.validate import load_records

register_admin(annotate_app)
runner = CliRunner()


def _run(*args: str) -> str:
    r = runner.invoke(annotate_app, list(args))
    assert r.exit_code == 0, r.output
    return r.output


def test_accounts_export_with_gold_threshold_and_agreement(annotate_data, tmp_path):
    folder = tmp_path / "proj"
    gold = tmp_path / "gold.jsonl"
    rows = [json.loads(x) for x in annotate_data[0].read_text().splitlines()][:2]
    for r in rows:
        r["id"] = "gold-" + r["id"]
        r["images"] = [str(annotate_data[0].parent / r["images"][0])]
    gold.write_text("".join(json.dumps(r) + "\n" for r in rows))
    project = open_project(f"sqlite:///{folder / 'annotate.sqlite'}", annotate_data[0], gold=gold, gold_every=3)
    out = _run("user", "add", "ann", "--store", str(folder))
    assert "invite link" in out and "/invite#" in out
    r = runner.invoke(annotate_app, ["user", "add", "bob", "--store", str(folder), "--password-stdin"], input=PASSWORD + "\n")
    assert r.exit_code == 0 and "invite" not in r.output
    assert runner.invoke(annotate_app, ["user", "add", "bob", "--store", str(folder)]).exit_code == 2  # exists
    st = project.store
    for who, gold_answer in (("ann", "first"), ("bob", "second")):  # ann right on gold, bob wrong
        user = st.user(who)
        for g in ("gold-p0", "gold-p1"):
            st.submit(Judgement(g, who, gold_answer, "first"), user, require_served=False)
        for item, outcome in (("p0", "first"), ("p1", "second" if who == "bob" else "first")):
            st.submit(Judgement(item, who, outcome, "first"), user, require_served=False)
    text = _run("agreement", "--store", str(folder))
    assert "ann: 2 labels, gold 1.00" in text and "bob: 2 labels, gold 0.00" in text and "Krippendorff" in text
    out_file = tmp_path / "export" / "pref.jsonl"
    assert "1 ties" in _run("export", "--store", str(folder), "--out", str(out_file))  # p1: 1 vs 1
    text = _run("export", "--store", str(folder), "--out", str(out_file), "--min-gold-accuracy", "0.5")
    assert "wrote 2 preference records" in text and "1 annotators left out" in text  # bob out: ann decides p1
    assert [r.id for r in load_records(out_file).records] == ["p0", "p1"]  # gold items are never exported
    _run("user", "disable-labels", "ann", "--store", str(folder))
    assert "ann\tannotator\tlabels disabled" in _run("user", "list", "--store", str(folder))


def test_migrate_command_and_old_folder_hint(annotate_data, tmp_path):
    from dataclasses import asdict

    from vlalign.annotate.items import PairItem, save_items

    old = tmp_path / "old"
    (old / "images").mkdir(parents=True)
    (old / "images" / "red.png").write_bytes((annotate_data[0].parent / "images" / "red.png").read_bytes())
    save_items([PairItem("p0", "p0", ["images/red.png"], "q", ("a", "b"), ("chosen", "rejected"))], old)
    (old / "annotations.jsonl").write_text(json.dumps(asdict(Judgement("p0", "ann", "first", "first", id="j1",
                                                                         time="2026-01-01T00:00:00+00:00"))) + "\n")
    r = runner.invoke(annotate_app, ["export", "--store", str(old), "--out", str(tmp_path / "x.jsonl")])
    assert r.exit_code == 2 and "vlalign annotate migrate --out" in r.output
    out = _run("migrate", "--out", str(old))
    assert "imported 1 items and 1 judgements" in out and "account ann: invite link" in out
    assert "wrote 1 preference records" in _run("export", "--store", str(old), "--out", str(tmp_path / "x.jsonl"))


def test_export_tasks_and_import_commands(annotate_data, tmp_path):
    folder = tmp_path / "proj"
    open_project(f"sqlite:///{folder / 'annotate.sqlite'}", annotate_data[0])
    out = _run("export-tasks", "--store", str(folder), "--format", "label-studio", "--out", str(tmp_path / "t.json"),
               "--image-url", "https://files.example.org/img")
    assert "t.label_config.xml" in out
    task = json.loads((tmp_path / "t.json").read_text())[0]
    assert task["data"]["image"].startswith("https://files.example.org/img/") and (tmp_path / "images").is_dir()
    task["annotations"] = [{"id": 1, "completed_by": 7, "result": [{"type": "pairwise", "value": {"selected": "left"}}]}]
    (tmp_path / "done.json").write_text(json.dumps([task]))
    assert "imported 1 judgements" in _run("import", "--store", str(folder), "--format", "label-studio",
                                           str(tmp_path / "done.json"))
    r = runner.invoke(annotate_app, ["import", "--store", str(folder), "--format", "argilla", str(tmp_path / "done.json")])
    assert r.exit_code == 2 and "no known id" in r.output


def test_serve_first_start_prints_the_admin_invite(annotate_data, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "vlalign.annotate", "serve", "--data", str(annotate_data[0]),
                             "--out", str(tmp_path / "proj"), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        invite = wait_for_line(proc, "first start: the admin sets a password at ", 120)
        assert "/invite#" in invite
        wait_for_line(proc, "listening on http://127.0.0.1:", 60)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        proc.stdout.close()
        proc.stderr.close()
    r = runner.invoke(annotate_app, ["serve", "--out", str(tmp_path / "p2"), "--host", "0.0.0.0"])
    assert r.exit_code == 2 and "--allowed-host" in r.output
