"""Small Flask helpers shared by the labelling and the review endpoints."""

from __future__ import annotations

from typing import Any

from flask import Response, g, jsonify, request

from vlalign.annotate.guard import HTTPError, parse_json_body
from vlalign.annotate.store import User


def json_response(status: int, **body: Any) -> Response:
    r = jsonify(body)
    r.status_code = status
    return r


def require(*roles: str) -> User:
    user: User | None = g.get("user")
    if user is None:
        raise HTTPError(401, "log in first (POST /api/login)")
    if roles and user.role not in roles:
        raise HTTPError(403, f"needs the role {' or '.join(roles)} (you are {user.role})")
    return user


def body() -> dict[str, Any]:
    data = parse_json_body(request.get_data(cache=True), request.content_type, g.guard)
    if not isinstance(data, dict):
        raise HTTPError(400, "body: expected a JSON object")
    return data
