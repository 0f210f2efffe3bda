"""Retention policies: which tags a cleanup removes, previewed exactly as applied."""

from __future__ import annotations

import contextlib
import fnmatch
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from aioreg.domain.registry import Registry
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index import Event

DAY = 86400.0


class RetentionPolicy(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Which tags a cleanup removes; protected patterns are never removed."""

    keep_last: int | None = None  # keep the N most recently pushed tags
    older_than_days: float | None = None  # remove tags pushed longer ago
    unpulled_days: float | None = None  # remove tags not pulled (or pushed) for that long
    include: list[str] = []  # regexes a tag must match to be considered (default: all)
    exclude: list[str] = []  # regexes that take a tag out of consideration
    protected: list[str] = msgspec.field(default_factory=lambda: ["latest"])  # globs never removed


@dataclass(frozen=True)
class Removal:
    repository: str
    tag: str
    digest: str
    reason: str


class Retention:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.index = registry.index

    async def set_policy(self, target: str, policy: RetentionPolicy | None) -> None:
        if policy is not None:
            for pattern in (*policy.include, *policy.exclude):
                try:
                    re.compile(pattern)
                except (re.error, RecursionError, OverflowError) as exc:
                    raise RegistryError(
                        ErrorCode.BAD_REQUEST, f"bad regex {pattern[:200]!r}: {exc}"
                    ) from None
        await self.index.retention.set_policy(
            target, None if policy is None else msgspec.to_builtins(policy)
        )

    async def policies(self) -> dict[str, RetentionPolicy]:
        raw = await self.index.retention.policies()
        return {target: msgspec.convert(p, RetentionPolicy) for target, p in raw.items()}

    async def preview(self, now: float | None = None) -> list[Removal]:
        """Exactly what ``apply`` with the same ``now`` will remove."""
        now = time.time() if now is None else now
        policies = await self.policies()
        removals: list[Removal] = []
        for summary in await self.index.listings.repository_summaries(None):
            name = summary.name
            policy = policies.get(name) or policies.get(name.split("/", 1)[0])
            if policy is None:
                continue
            immutable = await self.registry.rules(name)
            candidates = [
                t
                for t in await self.index.listings.tag_infos(name)
                if _considered(t.name, policy) and not immutable.tag_is_immutable(t.name)
            ]
            candidates.sort(key=lambda t: (t.pushed_at, t.name), reverse=True)
            for rank, tag in enumerate(candidates):
                reason = _removal_reason(policy, rank, tag.pushed_at, tag.last_pull_at, now)
                if reason:
                    removals.append(Removal(name, tag.name, tag.digest, reason))
        return removals

    async def apply(
        self,
        now: float | None = None,
        actor: str = "retention",
        on_removal: Callable[[Removal], None] | None = None,
    ) -> list[Removal]:
        """Remove what the preview selects; returns what was removed.

        A tag is removed only while it still points at the digest the preview
        chose: one pushed again since is newer than the policy looked at.
        """
        removed: list[Removal] = []
        for removal in await self.preview(now):
            if on_removal is not None:
                on_removal(removal)
            # RegistryError: removed or pushed again meanwhile, or made immutable.
            with contextlib.suppress(RegistryError):
                await self.registry.delete_manifest(
                    removal.repository, removal.tag, actor, digest=removal.digest
                )
                removed.append(removal)
                self.index.activity.note_event(
                    Event(
                        time.time(),
                        "retention",
                        removal.repository,
                        removal.tag,
                        removal.digest,
                        actor,
                        removal.reason,
                    )
                )
        await self.index.activity.flush()
        return removed


def _considered(tag: str, policy: RetentionPolicy) -> bool:
    if any(fnmatch.fnmatchcase(tag, p) for p in policy.protected):
        return False
    if policy.include and not any(re.fullmatch(p, tag) for p in policy.include):
        return False
    return not any(re.fullmatch(p, tag) for p in policy.exclude)


def _removal_reason(
    policy: RetentionPolicy, rank: int, pushed_at: float, pulled_at: float | None, now: float
) -> str | None:
    if policy.keep_last is not None and rank >= policy.keep_last:
        return f"beyond the {policy.keep_last} most recent"
    if policy.older_than_days is not None and now - pushed_at > policy.older_than_days * DAY:
        return f"pushed more than {policy.older_than_days:g} days ago"
    last_used = pulled_at or pushed_at
    if policy.unpulled_days is not None and now - last_used > policy.unpulled_days * DAY:
        return f"not pulled for {policy.unpulled_days:g} days"
    return None
