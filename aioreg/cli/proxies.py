"""``aioreg proxy ls|add|rm|purge``: pull-through proxies from the shell.

Proxies added here are stored in the index; a running server takes them up
within a few seconds. A password never goes on the command line (it would sit
in the shell history and the process list): ``--password-stdin`` reads it and
stores it, ``--password-env``/``--password-file`` store where the server reads
it from, as the config file's ``password_env``/``password_file`` do.
"""

from __future__ import annotations

import argparse
import sys

import msgspec

from aioreg.cli.command import Subparsers, bind, on_management
from aioreg.cli.output import parse_size
from aioreg.config import ProxyConfig
from aioreg.domain.management import Management
from aioreg.errors import ErrorCode, RegistryError
from aioreg.units import format_size


def add_parsers(commands: Subparsers) -> None:
    proxy = commands.add_parser("proxy", help="list, add, remove and purge pull-through proxies")
    actions = proxy.add_subparsers(dest="action", required=True)
    bind(
        actions.add_parser("ls", help="proxies (config file's and added), no credentials"),
        on_management(_ls),
    )
    add = bind(
        actions.add_parser("add", help="add a proxy namespace in front of an upstream registry"),
        on_management(_add),
    )
    add.add_argument("namespace", help="the local namespace, e.g. hub")
    add.add_argument("upstream", help="http(s)://host[:port] of the upstream registry")
    add.add_argument("--username", default="")
    secret = add.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin"
    )
    secret.add_argument(
        "--password-env", default="", metavar="NAME", help="the server reads it from $NAME"
    )
    secret.add_argument(
        "--password-file", default="", metavar="PATH", help="the server reads it from PATH"
    )
    add.add_argument("--upstream-prefix", default="", help="e.g. library for Docker Hub")
    add.add_argument("--revalidate-interval", type=float, help="seconds a tag is served unchecked")
    add.add_argument("--no-serve-stale", action="store_true", help="fail pulls when upstream fails")
    add.add_argument(
        "--max-bytes", type=parse_size, help="cap on what the cache holds, e.g. 20G (0: none)"
    )
    bind(
        actions.add_parser("rm", help="remove an added proxy and purge its cache (gc frees blobs)"),
        on_management(_rm),
    ).add_argument("namespace")
    bind(
        actions.add_parser("purge", help="delete a proxy's cached repositories (gc frees blobs)"),
        on_management(_purge),
    ).add_argument("namespace")


async def _ls(m: Management, args: argparse.Namespace) -> None:
    print(
        f"{'NAMESPACE':20} {'SOURCE':7} {'UPSTREAM':40} {'PREFIX':10} {'USER':12} "
        f"{'PASSWORD':8} CACHE (USED / CAP)"
    )
    for d in await m.proxies.all():
        c = d.config
        used = format_size(await m.registry.index.proxies.cached_bytes(c.namespace))
        cap = format_size(c.max_bytes) if c.max_bytes else "no cap"
        print(
            f"{c.namespace:20} {d.source:7} {c.upstream:40} {c.upstream_prefix:10} "
            f"{c.username or '-':12} {'set' if d.password_set else '-':8} {used} / {cap}"
        )


async def _add(m: Management, args: argparse.Namespace) -> None:
    entry: dict[str, object] = {
        "namespace": args.namespace,
        "upstream": args.upstream,
        "username": args.username,
        "password": sys.stdin.readline().rstrip("\n") if args.password_stdin else "",
        "password_env": args.password_env,
        "password_file": args.password_file,
        "upstream_prefix": args.upstream_prefix,
        "serve_stale": not args.no_serve_stale,
    }
    if args.revalidate_interval is not None:
        entry["revalidate_interval"] = args.revalidate_interval
    if args.max_bytes is not None:
        entry["max_bytes"] = args.max_bytes
    try:  # the same validation as a [[proxy]] entry of the config file
        proxy = msgspec.convert(entry, ProxyConfig)
    except msgspec.ValidationError as exc:
        raise RegistryError(ErrorCode.BAD_REQUEST, f"invalid proxy: {exc}") from None
    definition = await m.proxies.add(proxy)
    cap = format_size(definition.config.max_bytes) if definition.config.max_bytes else "none"
    print(f"added proxy {args.namespace} -> {args.upstream} (cache cap {cap})")


async def _rm(m: Management, args: argparse.Namespace) -> None:
    purged = await m.proxies.remove(args.namespace, "cli")
    print(
        f"removed proxy {args.namespace} and purged its {len(purged)} cached repositories; "
        "gc frees their blobs"
    )
    for name in purged:
        print(f"  {name}")


async def _purge(m: Management, args: argparse.Namespace) -> None:
    removed = await m.proxies.purge(args.namespace, "cli")
    print(f"purged {len(removed)} cached repositories of {args.namespace}; gc frees their blobs")
    for name in removed:
        print(f"  {name}")
