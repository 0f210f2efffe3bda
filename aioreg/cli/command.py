"""What a command group module gives the entry point: sub-parsers bound to their handlers.

A group's ``add_parsers`` creates its parsers and binds each leaf to the function
that runs it (``bind``), so the parser tree and the dispatch are one table.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from typing import TypeAlias

from aioreg.config import Config
from aioreg.domain.management import Management
from aioreg.domain.registry import Registry
from aioreg.errors import RegistryError

Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
"""The ``add_subparsers()`` result a group adds its commands to."""

Handler: TypeAlias = Callable[[Config, argparse.Namespace], int]
"""Runs one parsed command on the loaded config; returns the exit status."""

ManagementCommand: TypeAlias = Callable[[Management, argparse.Namespace], Awaitable[None]]


def bind(parser: argparse.ArgumentParser, handler: Handler) -> argparse.ArgumentParser:
    """Make ``handler`` the one that runs when ``parser`` (a leaf command) is chosen."""
    parser.set_defaults(handler=handler)
    return parser


def handler_of(args: argparse.Namespace) -> Handler:
    handler: Handler = args.handler
    return handler


def print_error(exc: RegistryError) -> int:
    """A refused operation: its message on stderr, exit status 1."""
    print(f"aioreg: {exc.message}", file=sys.stderr)
    return 1


def on_management(command: ManagementCommand) -> Handler:
    """Run ``command`` with the same ``Management`` code as ``/api/v1``, on the data directory.

    The index's write lock makes it safe next to a running server.
    """

    def handler(config: Config, args: argparse.Namespace) -> int:
        return asyncio.run(_run_management(config, args, command))

    return handler


async def _run_management(
    config: Config, args: argparse.Namespace, command: ManagementCommand
) -> int:
    registry = Registry(config)
    registry.store.open()
    await registry.index.open()
    try:
        await command(Management(registry), args)
    except RegistryError as exc:
        return print_error(exc)
    finally:
        await registry.index.close()
    return 0
