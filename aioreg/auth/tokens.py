"""Signed JWTs for Docker token auth, and personal access tokens.

The signing key (ES256) is generated on the first start with auth on and kept
in ``<data>/auth/token-signing-key.pem`` (mode 0600), so tokens survive restarts.
Personal access tokens look like ``aioreg_<id>_<secret>``: the id finds the
row, only a sha256 of the high-entropy secret is stored, compared in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from aioreg.auth.scopes import Access

ISSUER = "aioreg"
ALGORITHM = "ES256"
PAT_RE = re.compile(r"aioreg_([0-9a-f]{16})_([A-Za-z0-9_-]{32,})")


class InvalidToken(Exception):
    """Signature, audience, issuer, type or expiry did not check out."""


def load_or_create_key(directory: Path) -> ec.EllipticCurvePrivateKey:
    path = directory / "token-signing-key.pem"
    if path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return key
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    temp = path.with_suffix(".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)
    return key


class TokenSigner:
    def __init__(self, key: ec.EllipticCurvePrivateKey, service: str) -> None:
        self._key = key
        self._public = key.public_key()
        self.service = service

    def _sign(
        self, kind: str, subject: str, method: str, ttl: float, **extra: Any
    ) -> tuple[str, float]:
        now = time.time()
        claims = {
            "iss": ISSUER,
            "sub": subject,
            "aud": self.service,
            "iat": int(now),
            "nbf": int(now) - 1,
            "exp": int(now + ttl),
            "jti": uuid.uuid4().hex,
            "typ": kind,
            "amr": method,
            **extra,
        }
        return jwt.encode(claims, self._key, algorithm=ALGORITHM), now

    def access_token(
        self,
        subject: str,
        access: list[Access],
        method: str,
        ttl: float,
        account: tuple[int, int] | None = None,
    ) -> tuple[str, float]:
        """``account`` (user id, credential generation) binds the token to one account's
        current credentials; anonymous tokens have none."""
        return self._sign(
            "access", subject, method, ttl, access=[a.claim() for a in access], **_bound(account)
        )

    def refresh_token(
        self,
        subject: str,
        method: str,
        ttl: float,
        token_id: str | None,
        account: tuple[int, int],
    ) -> str:
        return self._sign("refresh", subject, method, ttl, tid=token_id, **_bound(account))[0]

    def verify(self, token: str, kind: str = "access") -> dict[str, Any]:
        try:
            claims = jwt.decode(
                token,
                self._public,
                algorithms=[ALGORITHM],
                audience=self.service,
                issuer=ISSUER,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
        except jwt.PyJWTError as exc:
            raise InvalidToken(str(exc)) from None
        if claims.get("typ") != kind:
            raise InvalidToken(f"not an {kind} token")
        return claims


def _bound(account: tuple[int, int] | None) -> dict[str, int]:
    return {} if account is None else {"uid": account[0], "gen": account[1]}


def token_account(claims: dict[str, Any]) -> tuple[int, int] | None:
    """The (user id, credential generation) a verified token is bound to, if any."""
    uid, generation = claims.get("uid"), claims.get("gen")
    if type(uid) is not int or type(generation) is not int:
        return None
    return uid, generation


def new_personal_token() -> tuple[str, str, str]:
    """(id, secret, the full token string shown once to the user)."""
    token_id = secrets.token_hex(8)
    secret = secrets.token_urlsafe(32)
    return token_id, secret, f"aioreg_{token_id}_{secret}"


def split_personal_token(value: str) -> tuple[str, str] | None:
    match = PAT_RE.fullmatch(value)
    return None if match is None else (match[1], match[2])


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(stored_hash: str, secret: str) -> bool:
    return hmac.compare_digest(stored_hash, hash_secret(secret))
