"""The API floor's ``ktg`` subcommands: ``serve``, and ``admin`` (``api.admin``).

A ``ktg.commands`` entry point (pyproject.toml): the engine's CLI finds it there
and never imports this floor. The server and its dependencies are imported
only when the command runs.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ktg.cli import Subcommands


def add_serve_command(sub: Subcommands) -> None:
    p = sub.add_parser("serve", help="run the REST API")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--storage")
    p.set_defaults(func=_serve)


def _serve(args: argparse.Namespace) -> int:
    from api.server import serve

    serve(host=args.host, port=args.port, storage=args.storage)
    return 0


def add_admin_command(sub: Subcommands) -> None:
    from api.admin import add_admin_command as add

    add(sub)
