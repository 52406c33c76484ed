"""``ktg serve``: the API on this machine, with the same code Docker runs.

Configuration comes from the environment (``api.settings``); ``--storage``
overrides ``KTG_STORAGE``. With no ``RAY_ADDRESS``, a local Ray head is started
(or the one recorded in the data dir reused) and left running when the API
stops, so restarting the API never interrupts a search.

Bad configuration is one line on stderr and exit status 2: no traceback.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from collections.abc import Sequence
from dataclasses import replace

from api.settings import Settings

EXIT_CONFIG = 2


def _fail(message: str) -> None:
    print(f"ktg serve: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_CONFIG)


def _check_port(host: str, port: int) -> None:
    """Fail now, in one line, rather than after start-up with uvicorn's traceback."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            _fail(f"--port: cannot listen on {host}:{port}: {exc.strerror}")


def prepare(storage: str | None = None) -> Settings:
    """Read and check the configuration, reach the database, and find (or start) Ray.

    Raises ``SystemExit`` with one line on stderr when something cannot work.
    """
    from sqlalchemy.exc import SQLAlchemyError

    from api.db import SchemaError, init_schema, make_engine
    from api.ray_head import HeadError, ensure_local_head
    from api.settings import ConfigError
    from ktg.errors import KtgError, first_line
    from search.study.storage import masked, open_storage

    try:
        settings = Settings.from_env(storage=storage)
    except ConfigError as exc:
        _fail(str(exc))
    try:
        open_storage(settings.storage)  # one clear line if the database cannot be used; creates Optuna's tables
        engine = make_engine(settings.storage, pool_size=1)
        try:
            init_schema(engine)
        finally:
            engine.dispose()
    except (KtgError, SchemaError) as exc:
        _fail(str(exc))
    except SQLAlchemyError as exc:
        _fail(f"storage: cannot use {masked(settings.storage)}: {first_line(exc)}")
    if settings.ray_address is None:
        try:
            head = ensure_local_head(settings.data_dir, settings.storage)
        except HeadError as exc:
            _fail(str(exc))
        print(f"ktg serve: local Ray head {head.dashboard_url} (pid {head.pid}); it keeps running after the API "
              f"stops (stop it with: kill -TERM -{head.pid})", file=sys.stderr)
        settings = replace(settings, ray_address=head.dashboard_url, ray_token=head.token())
    return settings


def serve(host: str = "127.0.0.1", port: int = 8000, storage: str | None = None) -> None:
    """Run the API until interrupted (SIGINT/SIGTERM stop it gracefully)."""
    import uvicorn

    from api.app import PARSER_HEAD_BYTES, create_app
    from search.study.storage import masked

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    _check_port(host, port)
    settings = prepare(storage)
    app = create_app(settings)
    print(f"ktg serve: http://{host}:{port}/docs (storage {masked(settings.storage)}, data {settings.data_dir})",
          file=sys.stderr)
    # h11 rather than httptools: httptools reads request heads of any size (16 MB were read).
    uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, timeout_graceful_shutdown=10,
                http="h11", h11_max_incomplete_event_size=PARSER_HEAD_BYTES)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m api.server", description="Run the ktg REST API.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--storage", help="database URL (default $KTG_STORAGE, else sqlite:///ktg-studies.db)")
    args = parser.parse_args(argv)
    serve(host=args.host, port=args.port, storage=args.storage)
    return 0


if __name__ == "__main__":
    sys.exit(main())
