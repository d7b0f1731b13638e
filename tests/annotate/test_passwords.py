"""Password hashes: the production scrypt parameters, verification, and refusals."""

from __future__ import annotations

import hashlib

import pytest

from vlalign.annotate import passwords


def test_production_parameters_and_round_trip(monkeypatch):
    monkeypatch.setattr(passwords, "N", 2**14)  # undo the suite's cheap setting: the real cost
    stored = passwords.hash_password("a long passphrase")
    kind, n, r, p, salt, digest = stored.split("$")
    assert (kind, n, r, p) == ("scrypt", "16384", "8", "1") and len(bytes.fromhex(salt)) == 16
    # the digest is scrypt itself (RFC 7914) with the stored salt, nothing home-made
    assert digest == hashlib.scrypt(b"a long passphrase", salt=bytes.fromhex(salt), n=16384, r=8, p=1, dklen=32).hex()
    assert passwords.verify_password("a long passphrase", stored)
    assert not passwords.verify_password("a long passphrasE", stored)
    assert passwords.hash_password("a long passphrase") != stored  # a fresh salt every time


def test_refusals():
    assert not passwords.verify_password("anything", None)  # unknown account: still one hash, then False
    assert not passwords.verify_password(12345, passwords.hash_password("a long passphrase"))
    with pytest.raises(ValueError, match="8 to 256"):
        passwords.hash_password("short")
    with pytest.raises(ValueError, match="8 to 256"):
        passwords.hash_password("x" * 257)
