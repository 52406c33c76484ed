"""Stable seeds derived from a run seed and a purpose.

The determinism contract says a node's initial weights depend only on
(seed, node id, model) and the batches only on the seed; deriving each stream's
seed by hashing its purpose keeps the streams independent of one another.
"""

from __future__ import annotations

import hashlib


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that depends only on ``parts`` (stable across processes)."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)
