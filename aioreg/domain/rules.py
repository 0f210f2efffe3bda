"""Per-namespace push rules, overridable per repository.

The registry enforces the content rules (tag overwrite, immutable tags, content
trust) whether or not authentication is on; access control enforces the
identity rules (member-only push, token-only push).
"""

from __future__ import annotations

import fnmatch

import msgspec

SIGNATURE_ARTIFACT_TYPES = frozenset(
    {
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.sigstore.bundle.v0.3+json",
        "application/vnd.cncf.notary.signature",
    }
)


class PushRules(msgspec.Struct, kw_only=True, omit_defaults=True, forbid_unknown_fields=True):
    allow_tag_overwrite: bool = True
    immutable_tags: list[str] = []
    must_be_project_member: bool = False
    must_use_auth_token_for_push: bool = False
    require_content_trust: bool = False

    def tag_is_immutable(self, tag: str) -> bool:
        return any(fnmatch.fnmatchcase(tag, pattern) for pattern in self.immutable_tags)


def namespace_of(repository: str) -> str:
    """The first path component; a one-component name is its own namespace."""
    return repository.split("/", 1)[0]


def effective_rules(
    namespace_rules: dict[str, object], repository_rules: dict[str, object]
) -> PushRules:
    """Namespace rules with any option the repository sets taking precedence."""
    return msgspec.convert({**namespace_rules, **repository_rules}, PushRules)


def signature_tag(digest: str) -> str:
    """Where cosign keeps a signature when the registry has no referrers API."""
    algorithm, _, hex_ = digest.partition(":")
    return f"{algorithm}-{hex_}.sig"
