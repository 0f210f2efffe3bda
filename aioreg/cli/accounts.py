"""``aioreg user|token|namespace|audit``: account administration on the data directory."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import TypeAlias, cast

from aioreg.auth.accounts import Accounts, parse_token_scope
from aioreg.cli.command import Handler, Subparsers, bind, print_error
from aioreg.cli.output import format_time
from aioreg.config import Config
from aioreg.errors import ErrorCode, RegistryError
from aioreg.index import Index

BOOL = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}

AccountsCommand: TypeAlias = Callable[[Accounts, argparse.Namespace], Awaitable[None]]


def add_parsers(commands: Subparsers) -> None:
    user = commands.add_parser("user", help="manage users and robot accounts")
    users = user.add_subparsers(dest="action", required=True)
    on_users = _on_accounts(_user)
    add = bind(
        users.add_parser("add", help="create a user (a password is generated unless given)"),
        on_users,
    )
    add.add_argument("name")
    add.add_argument("--admin", action="store_true")
    add.add_argument("--robot", action="store_true", help="no password; authenticates with tokens")
    add.add_argument("--password-stdin", action="store_true")
    bind(users.add_parser("rm", help="delete a user and its tokens"), on_users).add_argument("name")
    passwd = bind(users.add_parser("passwd", help="set a user's password"), on_users)
    passwd.add_argument("name")
    passwd.add_argument("--password-stdin", action="store_true")
    bind(users.add_parser("ls", help="list users"), on_users)

    token = commands.add_parser("token", help="personal access tokens and robot tokens")
    tokens = token.add_subparsers(dest="action", required=True)
    on_tokens = _on_accounts(_token)
    create = bind(tokens.add_parser("create", help="create a token (shown once)"), on_tokens)
    create.add_argument("user")
    create.add_argument("--name", required=True)
    create.add_argument(
        "--scope",
        action="append",
        required=True,
        help="NAMESPACE:pull,push,delete (NAMESPACE may be *); repeatable",
    )
    create.add_argument("--expires-days", type=float, help="expiry (default: never)")
    bind(tokens.add_parser("revoke", help="revoke a token by id"), on_tokens).add_argument("id")
    bind(tokens.add_parser("ls", help="list tokens"), on_tokens).add_argument("user", nargs="?")

    namespace = commands.add_parser("namespace", help="namespaces, members, visibility, rules")
    namespaces = namespace.add_subparsers(dest="action", required=True)
    on_namespaces = _on_accounts(_namespace)
    ns_create = bind(namespaces.add_parser("create"), on_namespaces)
    ns_create.add_argument("name")
    ns_create.add_argument("--owner")
    ns_create.add_argument("--visibility", choices=["public", "private"], default="private")
    bind(namespaces.add_parser("rm"), on_namespaces).add_argument("name")
    bind(namespaces.add_parser("ls"), on_namespaces)
    member = bind(
        namespaces.add_parser("member", help="add, change or remove a member"), on_namespaces
    )
    member.add_argument("name")
    member.add_argument("user")
    member.add_argument("role", choices=["read", "write", "admin", "remove"])
    settings = bind(
        namespaces.add_parser(
            "set", help="visibility and push rules (with --repository: override for one repository)"
        ),
        on_namespaces,
    )
    settings.add_argument("name")
    settings.add_argument("--repository")
    settings.add_argument("--visibility", choices=["public", "private"])
    settings.add_argument("--allow-tag-overwrite", choices=sorted(BOOL))
    settings.add_argument("--immutable-tags", help="comma-separated patterns, e.g. 'v*,release-*'")
    settings.add_argument("--must-be-project-member", choices=sorted(BOOL))
    settings.add_argument("--must-use-auth-token-for-push", choices=sorted(BOOL))
    settings.add_argument("--require-content-trust", choices=sorted(BOOL))

    audit = bind(
        commands.add_parser("audit", help="recent push/delete authorization decisions"),
        _on_accounts(_audit),
    )
    audit.add_argument("--limit", type=int, default=50)


def _denied(message: str) -> RegistryError:
    return RegistryError(ErrorCode.DENIED, message)


def _read_password(from_stdin: bool) -> str | None:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise _denied("passwords do not match")
        return first
    return None


async def _user(accounts: Accounts, args: argparse.Namespace) -> None:
    if args.action == "add":
        password = None if args.robot else _read_password(args.password_stdin)
        generated = await accounts.add_user(args.name, password, admin=args.admin, robot=args.robot)
        print(f"created user {args.name}" + (" (admin)" if args.admin else ""))
        if generated:
            print(f"password (shown once): {generated}")
    elif args.action == "rm":
        await accounts.remove_user(args.name)
        print(f"removed user {args.name}")
    elif args.action == "passwd":
        password = _read_password(args.password_stdin)
        if not password:
            raise _denied("an empty password is not allowed")
        await accounts.set_password(args.name, password)
        print(f"password changed for {args.name}")
    else:
        print(f"{'NAME':24} {'KIND':8}")
        for user in await accounts.index.accounts.users():
            kind = "robot" if user.is_robot else "admin" if user.is_admin else "user"
            print(f"{user.name:24} {kind:8}")


async def _token(accounts: Accounts, args: argparse.Namespace) -> None:
    if args.action == "create":
        scopes = [parse_token_scope(s) for s in args.scope]
        expires = None if args.expires_days is None else args.expires_days * 86400
        created = await accounts.create_token(args.user, args.name, scopes, expires)
        print(f"token {created.id} created for {args.user}; it is shown only once:")
        print(created.value)
        for gap in await accounts.scope_gaps(args.user, scopes):
            fix = f"aioreg namespace member {gap.namespace} {args.user} {gap.role}"
            if not gap.namespace_exists:
                fix = f"aioreg namespace create {gap.namespace}, then {fix}"
            print(
                f"warning: {args.user} may not {','.join(sorted(gap.missing))} in "
                f"{gap.namespace}, so neither may this token; grant the role with: {fix}",
                file=sys.stderr,
            )
    elif args.action == "revoke":
        await accounts.revoke_token(args.id)
        print(f"revoked token {args.id}")
    else:
        user_id = None
        if args.user:
            row = await accounts.index.accounts.user(args.user)
            if row is None:
                raise _denied(f"no user {args.user}")
            user_id = row.id
        print(f"{'ID':18} {'NAME':16} {'SCOPES':30} {'EXPIRES':17} {'STATE':8}")
        for token in await accounts.index.accounts.tokens(user_id):
            shown = " ".join(
                f"{s['namespace']}:{','.join(cast(list[str], s['actions']))}" for s in token.scopes
            )
            state = "revoked" if token.revoked_at else "active"
            print(
                f"{token.id:18} {token.name:16} {shown:30} {format_time(token.expires_at):17} {state:8}"
            )


async def _namespace(accounts: Accounts, args: argparse.Namespace) -> None:
    if args.action == "create":
        await accounts.create_namespace(args.name, args.owner, args.visibility)
        print(f"created namespace {args.name} ({args.visibility})")
    elif args.action == "rm":
        if not await accounts.index.accounts.remove_namespace(args.name):
            raise _denied(f"no namespace {args.name}")
        print(f"removed namespace {args.name} (its repositories stay)")
    elif args.action == "member":
        role = None if args.role == "remove" else args.role
        await accounts.set_member(args.name, args.user, role)
        print(f"{args.user} in {args.name}: {args.role}")
    elif args.action == "set":
        rules: dict[str, object] = {}
        for option in (
            "allow_tag_overwrite",
            "must_be_project_member",
            "must_use_auth_token_for_push",
            "require_content_trust",
        ):
            value = getattr(args, option)
            if value is not None:
                rules[option] = BOOL[value]
        if args.immutable_tags is not None:
            rules["immutable_tags"] = [p for p in args.immutable_tags.split(",") if p]
        await accounts.configure(args.name, args.repository, args.visibility, rules)
        print(f"updated {args.repository or args.name}")
    else:
        print(f"{'NAME':24} {'OWNER':16} {'VISIBILITY':10} RULES")
        for ns in await accounts.index.accounts.namespaces():
            print(f"{ns.name:24} {ns.owner or '-':16} {ns.visibility:10} {ns.rules or ''}")


async def _audit(accounts: Accounts, args: argparse.Namespace) -> None:
    print(f"{'WHEN':17} {'WHO':16} {'ACTION':7} {'RESULT':7} {'FROM':15} RESOURCE")
    for entry in await accounts.index.accounts.audit_log(args.limit):
        result = "allowed" if entry.allowed else "denied"
        print(
            f"{format_time(entry.at):17} {entry.actor:16} {entry.action:7} {result:7} "
            f"{entry.client or '-':15} {entry.resource}"
            + (f"  ({entry.reason})" if entry.reason else "")
        )


def _on_accounts(command: AccountsCommand) -> Handler:
    """Run ``command`` on the index of the data directory, which it creates if needed."""

    def handler(config: Config, args: argparse.Namespace) -> int:
        return asyncio.run(_run(config, args, command))

    return handler


async def _run(config: Config, args: argparse.Namespace, command: AccountsCommand) -> int:
    index = Index(config.data_path / "index.db", config.storage.index_busy_timeout)
    config.data_path.mkdir(parents=True, exist_ok=True)
    await index.open()
    try:
        await command(Accounts(index), args)
    except RegistryError as exc:
        return print_error(exc)
    finally:
        await index.close()
    return 0
