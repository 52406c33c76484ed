"""Joining Ray from a command: the given cluster, or a private local one (``ktg search``, ``ktg compare``).

The service's long-lived head is ``api.ray_head``'s; this is the short-lived Ray a
command starts for itself and which ends with it.
"""

from __future__ import annotations

import logging
import os


def join_ray(address: str | None = None, *, num_cpus: int | None = None) -> None:
    """Join ``address`` (else ``$RAY_ADDRESS``), or start a local Ray of ``num_cpus`` CPUs
    (default: all); nothing when this process has joined one already."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    local = {} if address or num_cpus is None else {"num_cpus": num_cpus}
    # "local" (not None): never join some other `ray start` cluster found in /tmp by accident.
    ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR, configure_logging=True, **local)
