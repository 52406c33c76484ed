"""The one exception type a user ever sees from ktg.

Every error raised for bad input is a ``KtgError`` whose message names the
offending field and what is allowed; the CLI prints it as one line and exits
non-zero, never with a traceback.
"""

from __future__ import annotations


class KtgError(Exception):
    """A user-facing error: bad input, missing data, or a run that cannot go on."""


def allowed(field: str, value: object, choices: object) -> KtgError:
    """Build the standard 'field: got X; allowed: ...' error."""
    return KtgError(f"{field}: got {value!r}; allowed: {choices}")
