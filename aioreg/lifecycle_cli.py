"""``aioreg repo|artifact|usage|gc|retention|quota``: management from the shell.

The same ``Management`` code as ``/api/v1``, run on the data directory (the
index's write lock makes it safe next to a running server).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Awaitable, Callable

import msgspec

from aioreg.config import Config
from aioreg.errors import RegistryError
from aioreg.management import Management, RetentionPolicy
from aioreg.progress import GIB, Progress, format_size, format_time
from aioreg.registry import Registry


def add_parsers(commands: argparse._SubParsersAction) -> list[argparse.ArgumentParser]:  # type: ignore[type-arg]
    repo = commands.add_parser("repo", help="list, show and delete repositories")
    repos = repo.add_subparsers(dest="action", required=True)
    ls = repos.add_parser("ls", help="repositories with tags, artifacts, size, last push/pull")
    ls.add_argument("namespace", nargs="?")
    ls.add_argument("--sort", choices=["name", "size", "last_push", "last_pull"], default="name")
    ls.add_argument("--desc", action="store_true")
    repos.add_parser("show", help="tags and artifacts of a repository").add_argument("name")
    repos.add_parser("rm", help="delete a repository, all its tags and artifacts").add_argument(
        "name"
    )

    artifact = commands.add_parser("artifact", help="delete one artifact")
    artifacts = artifact.add_subparsers(dest="action", required=True)
    rm = artifacts.add_parser("rm", help="delete an artifact by digest and the tags pointing at it")
    rm.add_argument("name")
    rm.add_argument("digest")

    usage = commands.add_parser("usage", help="logical and physical storage use")
    usage.add_argument("namespace", nargs="?")

    gc = commands.add_parser(
        "gc", help="remove blobs (and optionally untagged manifests) no one uses"
    )
    gc.add_argument("--dry-run", action="store_true")
    gc.add_argument("--untagged", action="store_true", help="also remove untagged manifests")

    retention = commands.add_parser("retention", help="retention policies: set, preview, apply")
    policies = retention.add_subparsers(dest="action", required=True)
    policies.add_parser("preview", help="list exactly what apply would remove")
    policies.add_parser("apply", help="remove what the policies select")
    policies.add_parser("ls", help="show stored policies")
    put = policies.add_parser("set", help="set the policy of a namespace or repository")
    put.add_argument("target")
    put.add_argument("--keep-last", type=int)
    put.add_argument("--older-than-days", type=float)
    put.add_argument("--unpulled-days", type=float)
    put.add_argument("--include", action="append", default=[], help="regex; repeatable")
    put.add_argument("--exclude", action="append", default=[], help="regex; repeatable")
    put.add_argument("--protect", action="append", help="glob never removed (default: latest)")
    policies.add_parser("clear", help="remove a policy").add_argument("target")

    quota = commands.add_parser("quota", help="set or clear a namespace's storage quota")
    quota.add_argument("namespace")
    quota.add_argument("bytes", type=parse_size, help="a size like 500M, 20G, or 'none'")
    return [
        *repos.choices.values(),
        *artifacts.choices.values(),
        usage,
        gc,
        *policies.choices.values(),
        quota,
    ]


SIZE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*(?:([kmgt])(?:i?b)?|b)?", re.IGNORECASE)
SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GIB, "t": 1 << 40}


def parse_size(text: str) -> int | None:
    """``500M``, ``20G``, ``1.5GiB``, ``512`` (bytes) or ``none``; binary units."""
    if text.strip().lower() == "none":
        return None
    match = SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"invalid size {text!r}: use bytes or a size like 500M, 20G, or 'none'"
        )
    number, unit = match.groups()
    return int(float(number) * SIZE_UNITS[(unit or "").lower()])


async def _repo(m: Management, args: argparse.Namespace) -> None:
    if args.action == "ls":
        rows = await m.repositories(args.namespace, args.sort, args.desc)
        print(
            f"{'REPOSITORY':40} {'TAGS':>5} {'ARTIFACTS':>9} {'SIZE':>10}  {'LAST PUSH':16}  LAST PULL"
        )
        for r in rows:
            print(
                f"{r.name:40} {r.tag_count:>5} {r.artifact_count:>9} {format_size(r.size):>10}  "
                f"{format_time(r.last_push_at):16}  {format_time(r.last_pull_at)}"
            )
    elif args.action == "show":
        detail = await m.repository(args.name)
        print(
            f"{detail.name}: {detail.tag_count} tags, {detail.artifact_count} artifacts, {format_size(detail.size)}"
        )
        print(f"\n{'TAG':30} {'DIGEST':20} {'SIZE':>10}  {'PUSHED':16}  PULLED")
        for t in detail.tags:
            print(
                f"{t.name:30} {t.digest[:19]:20} {format_size(t.size):>10}  {format_time(t.pushed_at):16}  {format_time(t.last_pulled_at)}"
            )
        print(f"\n{'ARTIFACT':20} {'TYPE':45} {'SIZE':>10}  PLATFORMS / TAGS / REFERRERS")
        for a in detail.artifacts:
            extra = ", ".join(a.platforms + a.tags + [f"<- {r[:19]}" for r in a.referrers])
            print(
                f"{a.digest[:19]:20} {(a.artifact_type or a.media_type)[:45]:45} {format_size(a.size):>10}  {extra}"
            )
    else:
        await m.delete_repository(args.name, "cli")
        print(f"deleted repository {args.name}")


async def _artifact(m: Management, args: argparse.Namespace) -> None:
    tags = await m.delete_artifact(args.name, args.digest, "cli")
    print(f"deleted {args.name}@{args.digest}" + (f" and tags {', '.join(tags)}" if tags else ""))


async def _usage(m: Management, args: argparse.Namespace) -> None:
    namespaces, repositories, total = await m.usage(args.namespace)
    print(f"{'NAME':40} {'LOGICAL':>12} {'PHYSICAL':>12}")
    for u in namespaces:
        print(f"{u.name + '/':40} {format_size(u.logical):>12} {format_size(u.physical):>12}")
    for u in repositories:
        print(f"  {u.name:38} {format_size(u.logical):>12} {format_size(u.physical):>12}")
    if args.namespace is None:
        print(
            f"{'(registry)':40} {format_size(total.logical):>12} {format_size(total.physical):>12}"
        )


async def _gc(m: Management, args: argparse.Namespace) -> None:
    print("collecting garbage" + (" (dry run)" if args.dry_run else "") + " ...", file=sys.stderr)
    report = await m.gc(dry_run=args.dry_run, untagged=args.untagged or None)
    verb = "would remove" if args.dry_run else "removed"
    for repository, digest in report.manifests:
        print(f"{verb} untagged manifest {repository}@{digest}")
    print(
        f"{verb} {report.blobs} blobs ({format_size(report.bytes)}) and {len(report.manifests)} "
        f"manifests; {report.uploads_expired} expired uploads cleaned; {report.seconds:.2f}s"
    )


async def _retention(m: Management, args: argparse.Namespace) -> None:
    if args.action == "set":
        policy = RetentionPolicy(
            keep_last=args.keep_last,
            older_than_days=args.older_than_days,
            unpulled_days=args.unpulled_days,
            include=args.include,
            exclude=args.exclude,
        )
        if args.protect is not None:
            policy.protected = args.protect
        await m.set_retention(args.target, policy)
        print(f"policy for {args.target}: {msgspec.json.encode(policy).decode()}")
    elif args.action == "clear":
        await m.set_retention(args.target, None)
        print(f"removed the policy of {args.target}")
    elif args.action == "ls":
        for target, policy in (await m.retention_policies()).items():
            print(f"{target:30} {msgspec.json.encode(policy).decode()}")
    else:
        apply = args.action == "apply"
        if apply:
            planned = len(await m.retention_preview())
            progress = Progress("retention", planned, unit="tags")
            removals = await m.retention_apply(actor="cli", on_removal=lambda _: progress.advance())
            progress.done()
        else:
            removals = await m.retention_preview()
        for r in removals:
            print(
                f"{'removed' if apply else 'would remove'} {r.repository}:{r.tag} ({r.digest[:19]}): {r.reason}"
            )
        print(f"{len(removals)} tags {'removed' if apply else 'selected'}")


async def _quota(m: Management, args: argparse.Namespace) -> None:
    await m.set_quota(args.namespace, args.bytes)
    shown = "none" if args.bytes is None else format_size(args.bytes)
    print(f"quota of {args.namespace}: {shown}")


COMMANDS: dict[str, Callable[[Management, argparse.Namespace], Awaitable[None]]] = {
    "repo": _repo,
    "artifact": _artifact,
    "usage": _usage,
    "gc": _gc,
    "retention": _retention,
    "quota": _quota,
}


async def run(config: Config, args: argparse.Namespace) -> int:
    registry = Registry(config)
    registry.store.open()
    await registry.index.open()
    try:
        await COMMANDS[args.command](Management(registry), args)
    except RegistryError as exc:
        print(f"aioreg: {exc.message}", file=sys.stderr)
        return 1
    finally:
        await registry.index.close()
    return 0
