"""Docker token-auth scopes: ``repository:team/app:pull,push`` and friends."""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("pull", "push", "delete")


@dataclass(frozen=True, slots=True)
class Access:
    type: str
    name: str
    actions: frozenset[str]

    def __str__(self) -> str:
        return f"{self.type}:{self.name}:{','.join(sorted(self.actions))}"

    def claim(self) -> dict[str, object]:
        return {"type": self.type, "name": self.name, "actions": sorted(self.actions)}


def parse_scope(scope: str) -> Access | None:
    """One scope string; None when it is not one we understand (ignored, as clients expect)."""
    kind, sep, rest = scope.partition(":")
    name, sep2, actions = rest.rpartition(":")
    if not sep or not sep2 or not name:
        return None
    kind = kind.split("(", 1)[0]  # "repository(plugin)" is a repository too
    wanted = {a.strip() for a in actions.split(",") if a.strip()}
    if "*" in wanted and kind == "repository":  # ``registry:catalog:*`` keeps its "*"
        wanted = set(ACTIONS)
    return Access(kind, name, frozenset(wanted))


def parse_scopes(values: list[str]) -> list[Access]:
    """All scopes of a request; several may share one parameter separated by spaces."""
    parsed = [parse_scope(part) for value in values for part in value.split()]
    return [access for access in parsed if access is not None]
