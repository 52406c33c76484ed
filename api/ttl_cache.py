"""A small thread-safe cache whose entries are fresh for ``ttl_s`` seconds.

The API serves some answers to many pollers: Ray job statuses, study statuses,
``/readyz``. Each is computed at most once per ``ttl_s`` per key and served
again meanwhile, so that polling (or a flood of unauthenticated probes) costs
one database or Ray request per ``ttl_s``, not one per request.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """Values by key, each fresh for ``ttl_s`` after it was put; at most ``max_entries`` kept.

    ``single_flight``: a missing key is computed by one thread while the others
    wait for its value (for caches of one or a few keys, such as /readyz; a
    cache of many keys computes them concurrently instead).
    """

    def __init__(self, ttl_s: float, *, max_entries: int = 10_000, single_flight: bool = False,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._entries: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()
        self._compute_lock = threading.Lock() if single_flight else None

    def get(self, key: K) -> tuple[bool, V | None]:
        """(True, value) while the key's value is fresh, else (False, None)."""
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or self.clock() - entry[0] >= self.ttl_s:
            return False, None
        return True, entry[1]

    def put(self, key: K, value: V) -> None:
        now = self.clock()
        with self._lock:
            if key not in self._entries and len(self._entries) >= self.max_entries:
                self._evict(now)
            self._entries[key] = (now, value)

    def forget(self, key: K) -> None:
        """Drop a key (its value just changed), so the next read computes it."""
        with self._lock:
            self._entries.pop(key, None)

    def get_or_compute(self, key: K, compute: Callable[[], V]) -> V:
        """The fresh value of ``key``, computing (and keeping) it when there is none."""
        found, value = self.get(key)
        if found:
            return value  # type: ignore[return-value]  # found: the value was put as a V
        if self._compute_lock is None:
            value = compute()
            self.put(key, value)
            return value
        with self._compute_lock:
            found, value = self.get(key)  # computed by another thread while this one waited?
            if not found:
                value = compute()
                self.put(key, value)
            return value  # type: ignore[return-value]

    def _evict(self, now: float) -> None:
        """Make room: drop the stale entries, or everything if all are fresh (the lock is held)."""
        for key in [k for k, (at, _) in self._entries.items() if now - at >= self.ttl_s]:
            del self._entries[key]
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
