"""Joining Ray from a command: the given cluster, or a private local one (``ktg search``, ``ktg compare``).

The service's long-lived head is ``api.ray_head``'s; this is the short-lived Ray a
command starts for itself and which ends with it.
"""

from __future__ import annotations

import logging
import os
import secrets

AUTH_MODE_ENV, AUTH_TOKEN_ENV, AUTH_TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"


def join_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join ``address`` (else ``$RAY_ADDRESS``), or start a local Ray of ``num_cpus`` CPUs
    (default: all); nothing when this process has joined one already."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        _private_token()
    local = {} if address or num_cpus is None else {"num_cpus": num_cpus}
    # "local" (not None): never join some other `ray start` cluster found in /tmp by accident.
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=True, **local)


def _private_token() -> None:
    """Give the local Ray a token of its own, in this process's environment (which the Ray
    processes it starts inherit), unless the user chose one or turned tokens off.

    Without it Ray writes a new token to ``~/.ray/auth_token``, readable by every user
    of the machine (mode 0644), and leaves it there after the command ends.
    """
    if os.environ.get(AUTH_MODE_ENV, "token").lower() != "token":
        return
    if os.environ.get(AUTH_TOKEN_ENV) or os.environ.get(AUTH_TOKEN_PATH_ENV):
        return
    # Only the token: ray.init itself turns token mode on for a new local cluster (and
    # refreshes its cached configuration, which a variable set here after `import ray` would miss).
    os.environ[AUTH_TOKEN_ENV] = secrets.token_hex(32)
