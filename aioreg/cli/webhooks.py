"""``aioreg webhook add|ls|rm|enable|disable|test|deliveries|redeliver`` from the shell.

Endpoints are stored in the index; a running server's delivery worker sees
them at once (and redeliveries within ``webhooks.poll_interval``). A secret
never goes on the command line (shell history, process list): ``--secret-stdin``
reads it, otherwise one is generated; either way ``add`` prints it this once.
"""

from __future__ import annotations

import argparse
import sys

from aioreg.cli.command import Subparsers, bind, on_management
from aioreg.cli.output import format_time
from aioreg.config import WEBHOOK_EVENTS, WEBHOOK_FORMATS, WebhookEndpointConfig
from aioreg.domain.management import Management
from aioreg.errors import ErrorCode, RegistryError
from aioreg.events.endpoints import DELIVERY_STATES


def add_parsers(commands: Subparsers) -> None:
    webhook = commands.add_parser("webhook", help="webhook endpoints and their deliveries")
    actions = webhook.add_subparsers(dest="action", required=True)
    add = bind(
        actions.add_parser("add", help="add an endpoint (prints its secret once)"),
        on_management(_add),
    )
    add.add_argument("url", help="http(s)://host[:port]/path the events are POSTed to")
    add.add_argument("--namespace", help="only this namespace's events (default: all)")
    add.add_argument(
        "--event",
        action="append",
        default=[],
        choices=WEBHOOK_EVENTS,
        dest="events",
        help="an event kind to send (repeatable; default: every kind)",
    )
    add.add_argument("--repository", default="*", help="glob over repository names")
    add.add_argument(
        "--media-type",
        action="append",
        default=[],
        dest="media_types",
        help="only events about manifests of this media type (repeatable)",
    )
    add.add_argument("--format", default=WEBHOOK_FORMATS[0], choices=WEBHOOK_FORMATS)
    add.add_argument("--disabled", action="store_true", help="add it paused")
    add.add_argument("--secret-stdin", action="store_true", help="read the secret from stdin")
    bind(actions.add_parser("ls", help="endpoints, without their secrets"), on_management(_ls))
    for name, handler, text in (
        ("rm", _rm, "remove an endpoint with its queue and history"),
        ("enable", _enable, "resume an endpoint"),
        ("disable", _disable, "pause an endpoint (nothing is queued for it meanwhile)"),
        ("test", _test, "send a test event now and show the answer"),
    ):
        bind(actions.add_parser(name, help=text), on_management(handler)).add_argument(
            "id", type=int
        )
    deliveries = bind(
        actions.add_parser("deliveries", help="an endpoint's deliveries and their attempts"),
        on_management(_deliveries),
    )
    deliveries.add_argument("id", type=int)
    deliveries.add_argument("--state", choices=DELIVERY_STATES)
    deliveries.add_argument("--limit", type=int, default=50)
    bind(
        actions.add_parser("redeliver", help="queue a delivery again (by its id)"),
        on_management(_redeliver),
    ).add_argument("delivery", type=int)


async def _add(m: Management, args: argparse.Namespace) -> None:
    secret = sys.stdin.readline().rstrip("\n") if args.secret_stdin else None
    endpoint, secret = await m.webhooks.add(
        WebhookEndpointConfig(
            url=args.url,
            secret=secret or "",
            namespace=args.namespace or "",
            events=args.events,
            repository_pattern=args.repository,
            media_types=args.media_types,
            format=args.format,
            enabled=not args.disabled,
        )
    )
    print(f"added webhook {endpoint.id} -> {endpoint.url}")
    if not args.secret_stdin:
        print(f"secret (shown once, keep it to verify signatures): {secret}")


async def _ls(m: Management, args: argparse.Namespace) -> None:
    print(f"{'ID':>4} {'NAMESPACE':12} {'FORMAT':12} {'ON':3} {'EVENTS':24} {'REPOSITORY':16} URL")
    for e in await m.webhooks.all():
        print(
            f"{e.id:>4} {e.namespace or '*':12} {e.format:12} {'yes' if e.enabled else 'no':3} "
            f"{','.join(e.events) or '*':24} {e.repository_pattern:16} {e.url}"
        )


async def _rm(m: Management, args: argparse.Namespace) -> None:
    await m.webhooks.remove(args.id)
    print(f"removed webhook {args.id}")


async def _enable(m: Management, args: argparse.Namespace) -> None:
    await m.webhooks.set_enabled(args.id, True)
    print(f"webhook {args.id} enabled")


async def _disable(m: Management, args: argparse.Namespace) -> None:
    await m.webhooks.set_enabled(args.id, False)
    print(f"webhook {args.id} disabled")


async def _test(m: Management, args: argparse.Namespace) -> None:
    attempt = await m.webhooks.test(args.id)
    print(f"status {attempt.status or '-'} in {attempt.latency * 1000:.0f} ms")
    if attempt.error:
        raise RegistryError(ErrorCode.UNAVAILABLE, f"test event not accepted: {attempt.error}")


async def _deliveries(m: Management, args: argparse.Namespace) -> None:
    limit = max(1, min(args.limit, 1000))
    print(f"{'ID':>6} {'STATE':9} {'ACTION':18} {'CREATED':19} {'TRIES':>5} LAST")
    for history in await m.webhooks.deliveries(args.id, limit, args.state):
        d, e = history.delivery, history.delivery.event
        last = history.attempts[-1] if history.attempts else None
        outcome = "-" if last is None else (last.error or str(last.status))
        print(
            f"{d.id:>6} {d.state:9} {e.action:18} {format_time(d.created_at):19} "
            f"{len(history.attempts):>5} {outcome}"
        )


async def _redeliver(m: Management, args: argparse.Namespace) -> None:
    history = await m.webhooks.redeliver(args.delivery)
    print(f"delivery {args.delivery} ({history.delivery.event.action}) queued again")
