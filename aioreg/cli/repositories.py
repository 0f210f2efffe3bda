"""``aioreg repo|artifact|usage|quota``: repositories, artifacts and storage use from the shell."""

from __future__ import annotations

import argparse

from aioreg.cli.command import Subparsers, bind, on_management
from aioreg.cli.output import format_time, parse_size
from aioreg.domain.management import Management
from aioreg.units import format_size


def add_parsers(commands: Subparsers) -> None:
    repo = commands.add_parser("repo", help="list, show and delete repositories")
    repos = repo.add_subparsers(dest="action", required=True)
    on_repos = on_management(_repo)
    ls = bind(
        repos.add_parser("ls", help="repositories with tags, artifacts, size, last push/pull"),
        on_repos,
    )
    ls.add_argument("namespace", nargs="?")
    ls.add_argument("--sort", choices=["name", "size", "last_push", "last_pull"], default="name")
    ls.add_argument("--desc", action="store_true")
    bind(
        repos.add_parser("show", help="tags and artifacts of a repository"), on_repos
    ).add_argument("name")
    bind(
        repos.add_parser("rm", help="delete a repository, all its tags and artifacts"), on_repos
    ).add_argument("name")
    deprecate = bind(
        repos.add_parser(
            "deprecate", help="mark a repository deprecated: pulls carry the message as a warning"
        ),
        on_repos,
    )
    deprecate.add_argument("name")
    deprecate.add_argument("--message", "-m", required=True, help="what pullers are told")
    deprecate.add_argument("--tag", help="deprecate this tag only (pulls by it)")
    undeprecate = bind(
        repos.add_parser("undeprecate", help="clear a repository's (or a tag's) deprecation"),
        on_repos,
    )
    undeprecate.add_argument("name")
    undeprecate.add_argument("--tag", help="clear this tag's deprecation")

    artifact = commands.add_parser("artifact", help="delete one artifact")
    artifacts = artifact.add_subparsers(dest="action", required=True)
    rm = bind(
        artifacts.add_parser("rm", help="delete an artifact by digest and the tags pointing at it"),
        on_management(_artifact),
    )
    rm.add_argument("name")
    rm.add_argument("digest")

    usage = bind(
        commands.add_parser("usage", help="logical and physical storage use"),
        on_management(_usage),
    )
    usage.add_argument("namespace", nargs="?")

    quota = bind(
        commands.add_parser("quota", help="set or clear a namespace's storage quota"),
        on_management(_quota),
    )
    quota.add_argument("namespace")
    quota.add_argument("bytes", type=parse_size, help="a size like 500M, 20G, or 'none'")


async def _repo(m: Management, args: argparse.Namespace) -> None:
    if args.action == "ls":
        rows = await m.listings.repositories(args.namespace, args.sort, args.desc)
        print(
            f"{'REPOSITORY':40} {'TAGS':>5} {'ARTIFACTS':>9} {'SIZE':>10}  {'LAST PUSH':16}  LAST PULL"
        )
        for r in rows:
            print(
                f"{r.name:40} {r.tag_count:>5} {r.artifact_count:>9} {format_size(r.size):>10}  "
                f"{format_time(r.last_push_at):16}  {format_time(r.last_pull_at)}"
            )
    elif args.action == "show":
        detail = await m.listings.repository(args.name)
        print(
            f"{detail.name}: {detail.tag_count} tags, {detail.artifact_count} artifacts, "
            f"{format_size(detail.size)}, {detail.pull_count} pulls"
        )
        busy = [f"{d.day} {d.pulls}" for d in detail.pulls_by_day if d.pulls]
        if busy:
            print(f"pulls per day (UTC, last {len(detail.pulls_by_day)} days): {', '.join(busy)}")
        if detail.deprecation is not None:
            print(f"deprecated: {detail.deprecation}")
        print(f"\n{'TAG':30} {'DIGEST':20} {'SIZE':>10}  {'PUSHED':16}  {'PULLED':16}  PULLS")
        for t in detail.tags:
            print(
                f"{t.name:30} {t.digest[:19]:20} {format_size(t.size):>10}  "
                f"{format_time(t.pushed_at):16}  {format_time(t.last_pulled_at):16}  {t.pull_count}"
            )
            if t.deprecation is not None:
                print(f"  deprecated: {t.deprecation}")
        print(f"\n{'ARTIFACT':20} {'TYPE':45} {'SIZE':>10}  PLATFORMS / TAGS / REFERRERS")
        for a in detail.artifacts:
            extra = ", ".join(a.platforms + a.tags + [f"<- {r[:19]}" for r in a.referrers])
            print(
                f"{a.digest[:19]:20} {(a.artifact_type or a.media_type)[:45]:45} {format_size(a.size):>10}  {extra}"
            )
    elif args.action == "deprecate":
        stored = await m.repositories.set_deprecation(args.name, args.message, args.tag)
        what = args.name if args.tag is None else f"{args.name}:{args.tag}"
        print(f"deprecated {what}: {stored}")
    elif args.action == "undeprecate":
        await m.repositories.set_deprecation(args.name, None, args.tag)
        what = args.name if args.tag is None else f"{args.name}:{args.tag}"
        print(f"{what} is no longer deprecated")
    else:
        await m.repositories.delete(args.name, "cli")
        print(f"deleted repository {args.name}")


async def _artifact(m: Management, args: argparse.Namespace) -> None:
    tags = await m.repositories.delete_artifact(args.name, args.digest, "cli")
    print(f"deleted {args.name}@{args.digest}" + (f" and tags {', '.join(tags)}" if tags else ""))


async def _usage(m: Management, args: argparse.Namespace) -> None:
    namespaces, repositories, total = await m.listings.usage(args.namespace)
    print(f"{'NAME':40} {'LOGICAL':>12} {'PHYSICAL':>12}")
    for u in namespaces:
        print(f"{u.name + '/':40} {format_size(u.logical):>12} {format_size(u.physical):>12}")
    for u in repositories:
        print(f"  {u.name:38} {format_size(u.logical):>12} {format_size(u.physical):>12}")
    if args.namespace is None:
        print(
            f"{'(registry)':40} {format_size(total.logical):>12} {format_size(total.physical):>12}"
        )


async def _quota(m: Management, args: argparse.Namespace) -> None:
    await m.repositories.set_quota(args.namespace, args.bytes)
    shown = "none" if args.bytes is None else format_size(args.bytes)
    print(f"quota of {args.namespace}: {shown}")
