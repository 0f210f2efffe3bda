"""Repository names, tags and digests, validated by the distribution-spec's grammar."""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from aioreg.errors import ErrorCode, RegistryError

NAME_COMPONENT = r"[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*"
NAME_RE = re.compile(rf"{NAME_COMPONENT}(?:/{NAME_COMPONENT})*")
NAME_MAX_LENGTH = 255
TAG_RE = re.compile(r"[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}")
DIGEST_RE = re.compile(r"[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")

# Algorithms we can verify, with the exact hex length each must have.
ALGORITHMS: dict[str, int] = {"sha256": 64, "sha512": 128}
HEX_RE = re.compile(r"[a-f0-9]+")


class Digest(NamedTuple):
    algorithm: str
    hex: str

    def __str__(self) -> str:
        return f"{self.algorithm}:{self.hex}"

    @classmethod
    def parse(cls, value: str) -> Digest:
        """Accept only digests we can verify: ``sha256``/``sha512``, lower-case hex, exact length."""
        if not DIGEST_RE.fullmatch(value):
            raise RegistryError(ErrorCode.DIGEST_INVALID, f"invalid digest {value!r}")
        algorithm, _, hex_ = value.partition(":")
        length = ALGORITHMS[supported_algorithm(algorithm)]
        if len(hex_) != length or not HEX_RE.fullmatch(hex_):
            raise RegistryError(
                ErrorCode.DIGEST_INVALID,
                f"digest {value!r} must be {length} lower-case hex characters",
            )
        return cls(algorithm, hex_)

    @classmethod
    def of(cls, data: bytes, algorithm: str = "sha256") -> Digest:
        return cls(algorithm, hashlib.new(algorithm, data).hexdigest())


def supported_algorithm(algorithm: str) -> str:
    """``algorithm`` if this registry can verify digests in it, else DIGEST_INVALID."""
    if algorithm not in ALGORITHMS:
        raise RegistryError(
            ErrorCode.DIGEST_INVALID,
            f"unsupported digest algorithm {algorithm[:100]!r}",
            {"supported": sorted(ALGORITHMS)},
        )
    return algorithm


def looks_like_digest(reference: str) -> bool:
    return ":" in reference


def validate_name(name: str) -> str:
    if len(name) > NAME_MAX_LENGTH or not NAME_RE.fullmatch(name):
        raise RegistryError(
            ErrorCode.NAME_INVALID,
            f"invalid repository name {name[:300]!r}",
            {"pattern": NAME_RE.pattern, "max_length": NAME_MAX_LENGTH},
        )
    return name


def validate_tag(tag: str) -> str:
    if not TAG_RE.fullmatch(tag):
        raise RegistryError(
            ErrorCode.TAG_INVALID,
            f"invalid tag {tag[:200]!r}",
            {"pattern": TAG_RE.pattern},
        )
    return tag


def parse_reference(reference: str) -> str | Digest:
    """A manifest reference is a digest when it has a colon, otherwise a tag."""
    if looks_like_digest(reference):
        return Digest.parse(reference)
    return validate_tag(reference)
