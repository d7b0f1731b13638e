"""The web API on SQLite and PostgreSQL (Flask's test client): logins, the labelling flow, validation,
roles, the review endpoints, and every kind of refused request with its status."""

from __future__ import annotations

import pytest
from annotate_support import PASSWORD, Client, make_project

from vlalign.annotate.app import AppConfig, create_app
from vlalign.annotate.export import export_preferences
from vlalign.annotate.items import left_side


@pytest.fixture
def project(db_url, annotate_data):
    return make_project(db_url, annotate_data[0], strategy="overlap", labels_per_item=2)


@pytest.fixture
def app(project):
    return create_app(project)


def test_page_and_item_do_not_reveal_the_source_label_or_the_id(project, app):
    ann = Client(app, "ann")
    page = ann.get("/")
    assert page.status_code == 200 and b"<kbd>t</kbd> tie" in page.data and b"correctness" in page.data
    assert "nonce-" in page.headers["Content-Security-Policy"] and page.headers["X-Frame-Options"] == "DENY"
    data = ann.next()
    assert data["prompt"] == "What color is the image?" and data["item"] == project.public_id("p0")
    assert {data["left"], data["right"]} == {"The image is red.", "The image is blue."}
    assert not {"chosen", "rejected", "source_order", "item_id"} & set(data) and "p0" not in str(data)
    img = ann.get(data["images"][0])
    assert img.status_code == 200 and img.data[:4] == b"\x89PNG" and img.mimetype == "image/png"
    assert data["left"] == project.queue.get("p0").text(left_side("p0", "ann", project.seed))


def test_submit_choice_with_span_correction_and_export(project, app):
    ann = Client(app, "ann")
    data = ann.next()
    worse = "left" if data["left"] == "The image is blue." else "right"
    better = "right" if worse == "left" else "left"
    start = data[worse].index("blue")
    r = ann.post("/api/submit", {
        "item": data["item"], "choice": better, "client_key": "k-0000001",
        "corrections": [{"side": worse, "start": start, "end": start + 4, "correction": "red", "kind": "color"}],
        "ratings": {better: {"correctness": 5}}, "unsafe": [], "seconds": 3.2})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["progress"] == {"items": 6, "labelled": 0, "votes": 1, "mine": 1}
    (j,) = project.store.judgements()
    assert j.outcome == "first" and j.annotator == "ann"  # the source's chosen side, whatever the layout
    assert j.corrections[0].side == "second" and (j.corrections[0].start, j.corrections[0].end) == (13, 17)
    assert j.ratings == {"first": {"correctness": 5}} and j.seconds == 3.2
    (rec,), _ = export_preferences(project.items, project.store.judgements())
    assert rec.rejected_segments[0].correction == "red"
    assert ann.next()["item"] == project.public_id("p1")  # overlap: next item in file order


def test_emoji_offsets_are_code_points(project, app):
    ann = Client(app, "ann")
    for _ in range(5):
        item = ann.next()["item"]
        assert ann.post("/api/submit", {"item": item, "choice": "skip"}).status_code == 200
    data = ann.next()
    left = data["left"]  # "The image is ... 🙂": the emoji is 1 code point (2 UTF-16 units)
    assert left.endswith("🙂")
    n = len(left)
    too_far = {"item": data["item"], "choice": "tie", "corrections": [{"side": "left", "start": n - 1, "end": n + 1}]}
    assert ann.post("/api/submit", too_far).status_code == 400
    ok = {**too_far, "corrections": [{"side": "left", "start": n - 1, "end": n, "correction": ""}]}
    assert ann.post("/api/submit", ok).status_code == 200


@pytest.mark.parametrize("change, message", [
    ({"choice": "both"}, "choice: 'both'"),
    ({"corrections": [{"side": "left", "start": 5, "end": 500}]}, "corrections[0]: span (5, 500) is outside"),
    ({"corrections": [{"side": "left", "start": 3, "end": 3}]}, "or empty"),
    ({"corrections": [{"side": "up", "start": 0, "end": 1}]}, "corrections[0].side"),
    ({"corrections": [{"side": "left", "start": 0, "end": 5}, {"side": "left", "start": 4, "end": 6}]}, "overlap"),
    ({"corrections": [{"side": "left", "start": 0, "end": 1, "correction": "x" * 2001}]}, "at most 2000"),
    ({"ratings": {"left": {"correctness": 9}}}, "ratings.left.correctness: 9"),
    ({"ratings": {"left": {"beauty": 3}}}, "unknown aspect"),
    ({"seconds": -1}, "seconds: -1"),
    ({"seconds": 1e300}, "seconds: 1e+300"),
    ({"comment": "c" * 2001}, "comment: text of at most 2000"),
    ({"client_key": "no spaces!"}, "client_key"),
])
def test_bad_submissions_get_400_with_a_clear_message(project, app, change, message):
    ann = Client(app, "ann")
    body = {"item": ann.next()["item"], "choice": "left", **change}
    r = ann.post("/api/submit", body)
    assert r.status_code == 400 and message in r.get_json()["error"], r.get_json()
    assert project.store.judgements() == []  # nothing half-written


def test_refused_requests_and_their_status(project, app):
    anon, ann, bob = Client(app), Client(app, "ann"), Client(app, "bob")
    item = ann.next()["item"]
    ok = {"item": item, "choice": "left"}
    raw = {"headers": {"X-CSRF-Token": ann.csrf, "Content-Type": "application/json"}}
    cases = {
        "no login": (anon.c.post("/api/submit", json=ok), 401),
        "no login, next": (anon.c.post("/api/next", json={}), 401),
        "no login, image": (anon.get(f"/image/{item}/0"), 401),
        "GET /api/next": (ann.get("/api/next"), 405),
        "no CSRF token": (ann.c.post("/api/submit", json=ok), 403),
        "wrong CSRF token": (ann.c.post("/api/submit", json=ok, headers={"X-CSRF-Token": bob.csrf}), 403),
        "cross-site Origin": (ann.post("/api/submit", ok, headers={"Origin": "https://evil.example"}), 403),
        "cross-site fetch": (ann.post("/api/submit", ok, headers={"Sec-Fetch-Site": "cross-site"}), 403),
        "foreign Host (DNS rebinding)": (ann.get("/api/me", headers={"Host": "evil.example:8765"}), 400),
        "foreign Host, POST": (ann.post("/api/submit", ok, headers={"Host": "evil.example"}), 400),
        "item served to someone else": (bob.post("/api/submit", ok), 403),
        "image of someone else's item": (bob.get(f"/image/{item}/0"), 404),
        "unknown item": (ann.post("/api/submit", {**ok, "item": "nope"}), 404),
        "annotator on review API": (ann.get("/api/review/annotators"), 403),
        "annotator disables labels": (ann.post("/api/review/annotators/bob", {"labels_disabled": True}), 403),
        "reviewer adds a user": (Client(app, "rev").post("/api/admin/users", {"name": "x"}), 403),
        "oversized body": (ann.c.post("/api/submit", data=b"{" + b" " * 70000 + b"}", **raw), 413),
        "form body": (ann.c.post("/api/submit", data={"item": item}, headers={"X-CSRF-Token": ann.csrf}), 415),
        "not JSON": (ann.c.post("/api/submit", data=b"{item: 1", **raw), 400),
        "deep JSON": (ann.c.post("/api/submit", data=b"[" * 30000 + b"]" * 30000, **raw), 400),
        "NaN": (ann.c.post("/api/submit", data=b'{"item": "%s", "choice": "left", "seconds": NaN}' % item.encode(), **raw), 400),
        "1e999": (ann.c.post("/api/submit", data=b'{"item": "%s", "choice": "left", "seconds": 1e999}' % item.encode(), **raw), 400),
        "huge int": (ann.c.post("/api/submit", data=b'{"seconds": ' + b"9" * 5000 + b"}", **raw), 400),
        "not UTF-8": (ann.c.post("/api/submit", data=b'{"item": "\xff"}', **raw), 400),
        "a list body": (ann.c.post("/api/submit", data=b"[1, 2]", **raw), 400),
        "wrong password": (anon.c.post("/api/login", json={"name": "ann", "password": "nope"}), 401),
        "unknown user": (anon.c.post("/api/login", json={"name": "zed", "password": PASSWORD}), 401),
        "made-up invite": (anon.c.post("/api/invite", json={"token": "abc", "password": "long enough 1"}), 403),
    }
    wrong = {name: (r.status_code, want) for name, (r, want) in cases.items() if r.status_code != want}
    assert wrong == {}
    assert all("error" in r.get_json() for r, _ in cases.values())
    assert project.store.judgements() == []  # 100% refused: nothing stored
    assert project.store.progress(2)["votes"] == 0


def test_login_cookie_flags_logout_and_secure_mode(project):
    plain = create_app(project).test_client()
    r = plain.post("/api/login", json={"name": "ann", "password": PASSWORD})
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    secure = create_app(project, AppConfig(secure_cookies=True)).test_client()
    r = secure.post("/api/login", json={"name": "ann", "password": PASSWORD}, base_url="https://localhost")
    assert r.headers["Set-Cookie"].startswith("__Host-vlalign_session=") and "Secure" in r.headers["Set-Cookie"]
    ann = Client(create_app(project), "ann")
    assert ann.post("/api/logout").status_code == 200
    assert ann.get("/api/me").status_code == 401  # the login is gone on the server, not just the cookie
    assert [e["action"] for e in project.store.events()].count("login") == 3


def test_invite_flow_and_admin_creates_accounts(project, app):
    boss = Client(app, "boss")
    r = boss.post("/api/admin/users", {"name": "carol", "role": "annotator"})
    assert r.status_code == 200
    token = r.get_json()["invite"].split("#", 1)[1]
    assert boss.post("/api/admin/users", {"name": "carol"}).status_code == 409
    new = app.test_client()
    assert new.post("/api/invite", json={"token": token, "password": "short"}).status_code == 400
    r = new.post("/api/invite", json={"token": token, "password": "carol's password"})
    assert r.status_code == 200 and r.get_json()["role"] == "annotator"
    assert new.get("/api/me").get_json()["name"] == "carol"  # logged in by the invite
    assert app.test_client().post("/api/invite", json={"token": token, "password": "again pw 123"}).status_code == 403


def test_review_quality_and_disabling_labels(project, app):
    ann, bob, rev = Client(app, "ann"), Client(app, "bob"), Client(app, "rev")
    for _ in range(3):  # ann and bob label p0..p2; they disagree on every item
        for who, choice in ((ann, "left"), (bob, "right")):
            d = who.next()
            # choose the source side "first" for ann and "second" for bob whatever the layout
            first_on_left = d["left"] == project.queue.get(project.by_public_id(d["item"]).item_id).responses[0]
            side = ("left" if first_on_left else "right") if choice == "left" else ("right" if first_on_left else "left")
            assert who.post("/api/submit", {"item": d["item"], "choice": side, "seconds": 2.0}).status_code == 200
    report = rev.get("/api/review/annotators").get_json()
    assert report["annotators"]["ann"]["labels"] == 3 and report["annotators"]["ann"]["seconds"]["page_median"] == 2.0
    # every item 1 first vs 1 second: raw agreement 0; nominal alpha with 2 labels per item, all pairs
    # disagreeing: D_o = 1 and alpha = 1 - (n - 1) * 6 / (3 * 3 * 2) = 1 - 5 * 6 / 18 = -2/3
    assert report["agreement"]["raw_agreement"] == 0 and report["agreement"]["krippendorff_alpha"] == pytest.approx(-2 / 3)
    items = rev.get("/api/review/disagreements").get_json()["items"]
    assert len(items) == 3 and items[0]["labels"] == {"ann": "first", "bob": "second"}
    assert rev.post("/api/review/annotators/bob", {"labels_disabled": True}).status_code == 200
    assert rev.post("/api/review/annotators/nobody", {"labels_disabled": True}).status_code == 404
    assert {j.annotator for j in project.store.judgements()} == {"ann"}
    records, _ = export_preferences(project.items, project.store.judgements())
    assert len(records) == 3  # with bob's labels disabled, ann's votes decide the three items
    assert rev.get("/review").status_code == 200
    assert Client(app).get("/review").headers["Location"] == "/login"  # pages send strangers to the login
