"""The page in a real browser: Playwright driving Debian's Chromium (/usr/bin/chromium, installed by
`make system-deps`; Playwright downloads no browser) against the real server.

A person's session: log in, judge a pair with the keyboard, double-click a wrong word, press m and type
the correction, rate aspects, flag the other response unsafe, judge, reload and see the progress; a
screenshot is saved in the test's tmp folder. What the page sent is checked in the database.
"""

from __future__ import annotations

import os
import shutil

import pytest
from annotate_support import PASSWORD, make_project, missing_dependency
from live import Server
from test_load_fault import _candidates

from vlalign.annotate.store import Store

CHROMIUM = os.environ.get("VLALIGN_CHROMIUM", "/usr/bin/chromium")


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        missing_dependency("the Playwright package", "pip install -e '.[annotate]'")
    if not shutil.which(CHROMIUM) and not os.path.exists(CHROMIUM):
        missing_dependency(f"Chromium ({CHROMIUM})", "apt-get install chromium")
    with sync_api.sync_playwright() as p:
        # --no-sandbox: Chromium's sandbox refuses to start as root (CI runs as root)
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def test_label_with_keyboard_mark_correct_rate_flag_reload(browser, tmp_path):
    db_url = f"sqlite:///{tmp_path / 'a.sqlite'}"
    make_project(db_url, _candidates(tmp_path / "data", 3), users=("ann",), strategy="overlap").store.close()
    server = Server(db_url, tmp_path / "proj", ["--strategy", "overlap"])
    server.start()
    base = f"http://127.0.0.1:{server.port}"
    page = browser.new_page(viewport={"width": 1100, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    try:
        page.goto(base + "/")
        page.wait_for_url(base + "/login")  # not logged in: the page sends us to the login form
        page.fill("#name", "ann")
        page.fill("#password", PASSWORD)
        page.keyboard.press("Enter")
        page.wait_for_url(base + "/")
        page.wait_for_selector("#task:not([hidden])")
        assert "0 judged by you" in page.inner_text("#status")

        # item 1: the keyboard alone ("1" = left is better)
        first_left = page.inner_text("#text-left")
        page.keyboard.press("1")
        page.wait_for_function("(t) => document.getElementById('text-left').textContent !== t", arg=first_left)
        assert "1 judged by you" in page.inner_text("#status")

        # item 2: mark the word "wrong" in whichever response says it, type a correction, rate, flag, judge
        side = "left" if "wrong" in page.inner_text("#text-left") else "right"
        better = "right" if side == "left" else "left"
        box = page.evaluate("""(side) => {
            const el = document.getElementById('text-' + side), node = el.firstChild, text = node.textContent;
            const r = document.createRange(), i = text.indexOf('wrong');
            r.setStart(node, i); r.setEnd(node, i + 5);
            const b = r.getBoundingClientRect(); return {x: b.x + b.width / 2, y: b.y + b.height / 2};
        }""", side)
        page.mouse.dblclick(box["x"], box["y"])  # a person double-clicks the word to select it
        selected = page.evaluate("() => window.getSelection().toString()")
        assert selected.strip().startswith("wrong")
        page.keyboard.press("m")
        page.keyboard.type("right")  # the correction input has the focus after marking
        assert page.locator(f"#text-{side} mark").inner_text() == selected
        page.select_option(f"select[data-side='{better}'][data-aspect='correctness']", "5")
        page.select_option(f"select[data-side='{side}'][data-aspect='helpfulness']", "2")
        page.check(f"input.unsafe[data-side='{side}']")
        page.click("#prompt")  # leave the form fields, so that keys judge again
        page.keyboard.press("1" if better == "left" else "2")
        page.wait_for_function("() => document.getElementById('status').textContent.includes('2 judged by you')")

        page.reload()
        page.wait_for_selector("#task:not([hidden])")
        assert "2 judged by you" in page.inner_text("#status")  # progress survives a reload
        shot = tmp_path / "annotate-page.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"
    finally:
        page.close()
        server.stop()
    assert errors == []  # no JavaScript error, no refused request, no CSP violation

    store = Store.open(db_url)
    j1, j2 = store.judgements()
    assert (j1.item_id, j1.annotator, j1.outcome) == ("p0", "ann", j1.shown_left)  # "1" = the left one
    assert j2.item_id == "p1" and j2.outcome == "first"  # the response without "wrong" is the source's chosen
    (c,) = j2.corrections
    wrong_text = store.items()[1].text(c.side)
    assert c.side == "second" and wrong_text[c.start:c.end] == selected and c.correction == "right"
    assert j2.ratings == {"first": {"correctness": 5}, "second": {"helpfulness": 2}} and j2.unsafe == ["second"]
    assert j1.seconds is not None and 0 < j1.seconds < 600
