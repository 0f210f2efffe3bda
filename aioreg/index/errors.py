"""What an index transaction can refuse, as facts; the domain decides what a client hears.

Each is raised inside the write transaction it concerns, so the transaction
rolls back as a whole: nothing of a refused change is ever committed.
"""

from __future__ import annotations

from typing import Literal

Kind = Literal["blob", "manifest"]


class IndexRefusal(Exception):
    """A change the index would not make, given the data it was handed."""


class TagMoveRefused(IndexRefusal):
    """A protected tag already points at another manifest."""

    def __init__(self, tag: str, current_digest: str) -> None:
        super().__init__(f"tag {tag} points at {current_digest}")
        self.tag = tag
        self.current_digest = current_digest


class MissingReferences(IndexRefusal):
    """A manifest names blobs (linked in its repository) or child manifests that are not there."""

    def __init__(self, kind: Kind, digests: list[str]) -> None:
        super().__init__(f"missing {kind}s: {', '.join(digests)}")
        self.kind: Kind = kind
        self.digests = digests


class SizeMismatch(IndexRefusal):
    """A descriptor's size is not the stored size of what it references."""

    def __init__(self, kind: Kind, digest: str, declared: int, stored: int) -> None:
        super().__init__(f"{kind} {digest}: declared {declared} bytes, stored {stored}")
        self.kind: Kind = kind
        self.digest = digest
        self.declared = declared
        self.stored = stored


class QuotaWouldExceed(IndexRefusal):
    """Linking would take the namespace's distinct blob bytes past ``quota_limit``."""

    def __init__(self, namespace: str, used: int, adding: int, limit: int) -> None:
        super().__init__(f"namespace {namespace}: {used} + {adding} > {limit} bytes")
        self.namespace = namespace
        self.used = used
        self.adding = adding
        self.limit = limit


class BlobStillReferenced(IndexRefusal):
    """The repository's manifests (at most 20 named) still reference the blob."""

    def __init__(self, manifests: list[str]) -> None:
        super().__init__(f"referenced by {', '.join(manifests)}")
        self.manifests = manifests


class UploadCapReached(IndexRefusal):
    """``open_sessions`` sessions are open (all, or the client's when ``per_client``)."""

    def __init__(self, open_sessions: int, *, per_client: bool) -> None:
        super().__init__(f"{open_sessions} upload sessions open")
        self.open_sessions = open_sessions
        self.per_client = per_client
