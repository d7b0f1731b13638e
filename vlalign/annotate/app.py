"""The labelling web app (Flask, served by waitress: :mod:`vlalign.annotate.server`).

Pages: ``/`` (label; keyboard 1 / 2 choose, t tie, s skip, m mark), ``/login``, ``/invite`` (set a
password from an invite link), ``/review`` (reviewers and admins). JSON API:

``POST /api/login``     {name, password} → login cookie       ``POST /api/invite``  {token, password}
``POST /api/logout``                                           ``GET  /api/me``      name, role, CSRF token
``POST /api/next``      the item on the user's screen, else claims the next one (state change → POST)
``POST /api/submit``    a judgement (:mod:`vlalign.annotate.submission`) for an item served to the user
``GET  /api/progress``  counts for the progress bar            ``GET  /image/<item>/<k>``  an image

Security model (docs/annotate.md): every request passes the Host check; every POST passes the Origin
check, and every POST but login/invite needs a live login cookie (HttpOnly, SameSite=Strict, Secure
behind https) and the login's CSRF token in ``X-CSRF-Token``. Bodies are bounded JSON
(:mod:`vlalign.annotate.guard`). Item ids never reach the browser (opaque per-project ids).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, Response, g, redirect, render_template, request

from vlalign.annotate.guard import LOOPBACK_NAMES, GuardConfig, HTTPError, check_host, check_origin
from vlalign.annotate.passwords import MAX_PASSWORD, check_password_rules
from vlalign.annotate.review import register_review
from vlalign.annotate.session import Project
from vlalign.annotate.store import NotServed, User
from vlalign.annotate.submission import BadSubmission, client_key, parse_submission, screen_sides
from vlalign.annotate.web import body, json_response, require

COOKIE = "vlalign_session"
SECURE_COOKIE = "__Host-vlalign_session"  # the __Host- prefix: Secure, Path=/, no Domain (browser-enforced)
PUBLIC_POSTS = ("/api/login", "/api/invite")


@dataclass
class AppConfig:
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    secure_cookies: bool = False  # True behind https (a reverse proxy): Secure + __Host- cookie
    max_body: int = 64 * 1024
    login_hours: float = 12.0
    on_judgement: Any = None  # callback(project) after each stored judgement (the active learner)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cookie_name(self) -> str:
        return SECURE_COOKIE if self.secure_cookies else COOKIE


def create_app(project: Project, config: AppConfig | None = None) -> Flask:
    cfg = config or AppConfig()
    guard = GuardConfig(tuple(h.lower() for h in cfg.allowed_hosts), cfg.max_body)
    app = Flask(__name__)  # templates/ next to this file
    app.config.update(JSON_SORT_KEYS=False, MAX_CONTENT_LENGTH=cfg.max_body, TRAP_HTTP_EXCEPTIONS=False)
    store = project.store

    @app.errorhandler(HTTPError)
    def http_error(exc: HTTPError):
        return json_response(exc.status, error=str(exc))

    @app.errorhandler(BadSubmission)
    def bad(exc: BadSubmission):
        return json_response(400, error=str(exc))

    @app.errorhandler(413)
    def too_large(_exc):
        return json_response(413, error=f"request body over {cfg.max_body} bytes")

    @app.errorhandler(404)
    def not_found(_exc):
        return json_response(404, error="not found")

    @app.errorhandler(405)
    def wrong_method(_exc):
        return json_response(405, error=f"{request.method} is not allowed here")

    @app.before_request
    def guard_request():
        g.guard = guard
        check_host(request.headers.get("Host"), guard)
        check_origin(request.method, request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"),
                     request.scheme, request.headers.get("Host", ""), guard)
        if request.content_length is not None and request.content_length > cfg.max_body:
            raise HTTPError(413, f"request body over {cfg.max_body} bytes")
        g.user, g.csrf, g.token = None, None, request.cookies.get(cfg.cookie_name)
        if g.token and len(g.token) <= 128:
            found = store.login(g.token)
            if found is not None:
                g.user, g.csrf = found
        if request.method == "POST" and request.path not in PUBLIC_POSTS:
            require()
            sent = request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(sent.encode(), (g.csrf or "").encode()):
                raise HTTPError(403, "missing or wrong CSRF token (send the X-CSRF-Token header from /api/me)")

    @app.after_request
    def headers(resp: Response) -> Response:
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        resp.headers.setdefault("X-Frame-Options", "DENY")
        resp.headers.setdefault("Referrer-Policy", "no-referrer")
        resp.headers.setdefault("Cache-Control", "no-store")
        nonce = g.get("nonce", "")
        resp.headers.setdefault("Content-Security-Policy", f"default-src 'self'; script-src 'nonce-{nonce}'; "
                                "style-src 'self' 'unsafe-inline'; img-src 'self'; frame-ancestors 'none'")
        return resp

    def page(name: str, **kw: Any) -> str:
        g.nonce = secrets.token_urlsafe(16)
        return render_template(name, nonce=g.nonce, **kw)

    def set_login(resp: Response, user: User) -> Response:
        token, _csrf = store.create_login(user, cfg.login_hours)
        resp.set_cookie(cfg.cookie_name, token, max_age=int(cfg.login_hours * 3600), path="/", httponly=True,
                        secure=cfg.secure_cookies, samesite="Strict")
        return resp

    # ---- pages ------------------------------------------------------------------------------------

    @app.get("/")
    def index():
        if g.user is None:
            return redirect("/login")
        return page("annotate.html", aspects=list(project.aspects))

    @app.get("/favicon.ico")
    def favicon():
        return Response(status=204)

    @app.get("/login")
    def login_page():
        return page("login.html")

    @app.get("/invite")
    def invite_page():
        return page("invite.html")

    # ---- accounts ---------------------------------------------------------------------------------

    @app.post("/api/login")
    def login():
        b = body()
        name, password = b.get("name"), b.get("password")
        if not isinstance(name, str) or len(name) > 64 or not isinstance(password, str) or len(password) > MAX_PASSWORD:
            raise HTTPError(400, "send {\"name\": ..., \"password\": ...}")
        user = store.check_password(name, password)
        if user is None:
            store.event(None, "login.failed", name[:64], {})
            raise HTTPError(401, "wrong name or password")
        return set_login(json_response(200, ok=True, name=user.name, role=user.role), user)

    @app.post("/api/invite")
    def invite():
        b = body()
        token, password = b.get("token"), b.get("password")
        try:
            check_password_rules(password)
        except ValueError as exc:
            raise HTTPError(400, str(exc)) from None
        user = store.redeem_invite(token, password) if isinstance(token, str) and len(token) <= 64 else None
        if user is None:
            raise HTTPError(403, "this invite link is unknown, used or expired (fix: ask an admin for a new one)")
        return set_login(json_response(200, ok=True, name=user.name, role=user.role), user)

    @app.post("/api/logout")
    def logout():
        user = require()
        store.logout(g.token, user)
        resp = json_response(200, ok=True)
        resp.delete_cookie(cfg.cookie_name, path="/", secure=cfg.secure_cookies, httponly=True, samesite="Strict")
        return resp

    @app.get("/api/me")
    def me():
        user = require()
        return json_response(200, name=user.name, role=user.role, csrf=g.csrf)

    # ---- labelling --------------------------------------------------------------------------------

    def progress(user: User) -> dict[str, int]:
        return project.queue.progress(user)

    @app.post("/api/next")
    def next_item():
        user = require()
        item = project.queue.next_for(user)
        if item is None:
            return json_response(200, done=True, progress=progress(user))
        sides = screen_sides(item.item_id, user.name, project.seed)
        pid = project.public_id(item.item_id)
        return json_response(200, done=False, item=pid, prompt=item.prompt,
                     images=[f"/image/{pid}/{k}" for k in range(len(item.images))],
                     left=item.text(sides["left"]), right=item.text(sides["right"]), progress=progress(user))

    @app.post("/api/submit")
    def submit():
        user = require()
        b = body()
        pid = b.get("item")
        item = project.by_public_id(pid) if isinstance(pid, str) and len(pid) <= 64 else None
        if item is None:
            raise HTTPError(404, f"item: unknown item {str(pid)[:64]!r} (fix: submit an item from /api/next)")
        key = client_key(b)
        judgement = parse_submission(b, item, user.name, project.seed, project.aspects)
        try:
            stored, retry = store.submit(judgement, user, key)
        except NotServed as exc:
            raise HTTPError(403, str(exc).replace(item.item_id, pid)) from None
        if cfg.on_judgement is not None and not retry:
            cfg.on_judgement(project)
        return json_response(200, ok=True, id=stored.id, retry=retry, progress=progress(user))

    @app.get("/api/progress")
    def progress_endpoint():
        return json_response(200, **progress(require()))

    @app.get("/image/<pid>/<int:k>")
    def image(pid: str, k: int):
        user = require()
        item = project.by_public_id(pid) if len(pid) <= 64 else None
        allowed = item is not None and (user.role in ("admin", "reviewer") or store.is_served(item.item_id, user.id))
        if not allowed or not 0 <= k < len(item.images):
            return json_response(404, error=f"no image {k} for item {pid[:64]!r}")
        found = store.image(item.images[k])
        if found is None:
            return json_response(404, error="image missing from the database")
        mime, data = found
        resp = Response(data, mimetype=mime)
        resp.headers["Cache-Control"] = "private, max-age=3600"
        return resp

    register_review(app, project, page)
    return app
