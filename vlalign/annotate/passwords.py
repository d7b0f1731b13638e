"""Password hashing with scrypt (hashlib, RFC 7914): memory-hard, in the standard library.

Stored form: ``scrypt$N$r$p$salt_hex$hash_hex``. N=2**14, r=8, p=1 is the interactive-login cost
recommended by the scrypt paper (16 MiB, ~50 ms here); the parameters travel with each hash, so they can
be raised later without invalidating old hashes. Verification runs a hash even when the account does
not exist (:data:`DUMMY`), so response time does not reveal which names exist.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

N, R, P, DKLEN = 2**14, 8, 1, 32
MIN_PASSWORD = 8
MAX_PASSWORD = 256


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=DKLEN, maxmem=256 * 1024 * 1024)


def check_password_rules(password: object) -> str:
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise ValueError(f"password: {MIN_PASSWORD} to {MAX_PASSWORD} characters")
    return password


def hash_password(password: str) -> str:
    check_password_rules(password)
    salt = secrets.token_bytes(16)
    return f"scrypt${N}${R}${P}${salt.hex()}${_scrypt(password, salt, N, R, P).hex()}"


DUMMY = f"scrypt${N}${R}${P}${'00' * 16}${'00' * DKLEN}"


def verify_password(password: object, stored: str | None) -> bool:
    """True when ``password`` matches ``stored``; always costs one hash (None = no such account)."""
    if not isinstance(password, str) or len(password) > MAX_PASSWORD:
        password = ""
    kind, n, r, p, salt, digest = (stored or DUMMY).split("$")
    if kind != "scrypt":
        raise ValueError(f"unknown password hash kind {kind!r}")
    ok = hmac.compare_digest(_scrypt(password, bytes.fromhex(salt), int(n), int(r), int(p)).hex(), digest)
    return ok and stored is not None
