"""``aioreg gc|retention``: garbage collection and retention policies from the shell."""

from __future__ import annotations

import argparse
import sys

import msgspec

from aioreg.cli.command import Subparsers, bind, on_management
from aioreg.cli.output import Progress
from aioreg.domain.management import Management
from aioreg.domain.retention import RetentionPolicy
from aioreg.units import format_size


def add_parsers(commands: Subparsers) -> None:
    gc = bind(
        commands.add_parser(
            "gc", help="remove blobs (and optionally untagged manifests) no one uses"
        ),
        on_management(_gc),
    )
    gc.add_argument("--dry-run", action="store_true")
    gc.add_argument("--untagged", action="store_true", help="also remove untagged manifests")

    retention = commands.add_parser("retention", help="retention policies: set, preview, apply")
    policies = retention.add_subparsers(dest="action", required=True)
    on_policies = on_management(_retention)
    bind(policies.add_parser("preview", help="list exactly what apply would remove"), on_policies)
    bind(policies.add_parser("apply", help="remove what the policies select"), on_policies)
    bind(policies.add_parser("ls", help="show stored policies"), on_policies)
    put = bind(
        policies.add_parser("set", help="set the policy of a namespace or repository"), on_policies
    )
    put.add_argument("target")
    put.add_argument("--keep-last", type=int)
    put.add_argument("--older-than-days", type=float)
    put.add_argument("--unpulled-days", type=float)
    put.add_argument("--include", action="append", default=[], help="regex; repeatable")
    put.add_argument("--exclude", action="append", default=[], help="regex; repeatable")
    put.add_argument("--protect", action="append", help="glob never removed (default: latest)")
    bind(policies.add_parser("clear", help="remove a policy"), on_policies).add_argument("target")


async def _gc(m: Management, args: argparse.Namespace) -> None:
    print("collecting garbage" + (" (dry run)" if args.dry_run else "") + " ...", file=sys.stderr)
    report = await m.gc.run(dry_run=args.dry_run, untagged=args.untagged or None)
    if report.held:
        print(
            "a backup or an import is running and holds GC off: nothing removed; run gc after it ends"
        )
        return
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
        await m.retention.set_policy(args.target, policy)
        print(f"policy for {args.target}: {msgspec.json.encode(policy).decode()}")
    elif args.action == "clear":
        await m.retention.set_policy(args.target, None)
        print(f"removed the policy of {args.target}")
    elif args.action == "ls":
        for target, policy in (await m.retention.policies()).items():
            print(f"{target:30} {msgspec.json.encode(policy).decode()}")
    else:
        apply = args.action == "apply"
        if apply:
            planned = len(await m.retention.preview())
            progress = Progress("retention", planned, unit="tags")
            removals = await m.retention.apply(actor="cli", on_removal=lambda _: progress.advance())
            progress.done()
        else:
            removals = await m.retention.preview()
        for r in removals:
            print(
                f"{'removed' if apply else 'would remove'} {r.repository}:{r.tag} ({r.digest[:19]}): {r.reason}"
            )
        print(f"{len(removals)} tags {'removed' if apply else 'selected'}")
