"""Reviewer and admin endpoints: quality per annotator, disagreements, disabling an annotator's labels,
accounts. Reviewers see texts in source order with every annotator's label; each change is a POST
that the audit log records with who and when.

``GET  /review``                              the page
``GET  /api/review/annotators``               per-annotator quality (:func:`annotator_report`) + agreement
``GET  /api/review/disagreements``            items whose annotators disagree (or missed a gold answer)
``POST /api/review/annotators/<name>``        {"labels_disabled": true|false}
``GET  /api/admin/users`` / ``POST``          list accounts / {"name", "role"} → one-time invite link
"""

from __future__ import annotations

import re
from typing import Any

from flask import Flask, g, redirect, request

from vlalign.annotate.agreement import agreement_report
from vlalign.annotate.guard import HTTPError
from vlalign.annotate.quality import annotator_report, disagreements
from vlalign.annotate.web import body, json_response, require

NAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
REVIEWERS = ("reviewer", "admin")


def valid_name(value: Any) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise HTTPError(400, f"name: {str(value)[:70]!r} (fix: 1-64 letters, digits, '.', '_', '@', '-')")
    return value


def register_review(app: Flask, project: Any, page: Any) -> None:
    store = project.store

    def team_state() -> tuple[list, set[str]]:
        disabled = {u.name for u in store.users() if u.labels_disabled}
        return store.judgements(include_disabled=True), disabled

    @app.get("/review")
    def review_page():
        if g.get("user") is None:
            return redirect("/login")
        return page("review.html")

    @app.get("/api/review/annotators")
    def annotators():
        require(*REVIEWERS)
        judgements, disabled = team_state()
        report = annotator_report(store.items(), judgements, disabled, store.served_times())
        counted = [j for j in judgements if j.annotator not in disabled]
        gold = {it.item_id for it in store.items() if it.gold is not None}
        agreement = agreement_report([j for j in counted if j.item_id not in gold])
        return json_response(200, annotators=report, agreement=agreement["overall"], pairs=agreement["pairs"])

    @app.get("/api/review/disagreements")
    def review_disagreements():
        require(*REVIEWERS)
        judgements, disabled = team_state()
        by_id = {it.item_id: it for it in store.items()}
        limit = min(max(request.args.get("limit", 100, type=int) or 100, 1), 1000)
        out = []
        for d in disagreements(store.items(), judgements)[:limit]:
            it = by_id[d["item_id"]]
            pid = project.public_id(it.item_id)
            out.append({**d, "item": pid, "prompt": it.prompt, "first": it.responses[0], "second": it.responses[1],
                        "images": [f"/image/{pid}/{k}" for k in range(len(it.images))],
                        "disabled": sorted(a for a in d["labels"] if a in disabled)})
        return json_response(200, items=out)

    @app.post("/api/review/annotators/<name>")
    def set_labels(name: str):
        reviewer = require(*REVIEWERS)
        flag = body().get("labels_disabled")
        if not isinstance(flag, bool):
            raise HTTPError(400, "labels_disabled: true or false")
        try:
            store.set_labels_disabled(valid_name(name), flag, reviewer)
        except KeyError as exc:
            raise HTTPError(404, str(exc)) from None
        return json_response(200, ok=True, name=name, labels_disabled=flag)

    @app.get("/api/admin/users")
    def list_users():
        require("admin")
        return json_response(200, users=[{"name": u.name, "role": u.role, "labels_disabled": u.labels_disabled}
                                         for u in store.users()])

    @app.post("/api/admin/users")
    def add_user():
        admin = require("admin")
        b = body()
        name, role = valid_name(b.get("name")), b.get("role", "annotator")
        try:
            token = store.add_user(name, role, by=admin)
        except ValueError as exc:
            raise HTTPError(409 if "exists" in str(exc) else 400, str(exc)) from None
        return json_response(200, ok=True, name=name, role=role, invite=f"{request.host_url}invite#{token}")
