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


def first_line(exc: BaseException) -> str:
    """An exception's first non-blank line (its class name when it says nothing): for one-line messages."""
    text = str(getattr(exc, "orig", None) or exc).strip()  # a SQLAlchemy error wraps the driver's in ``orig``
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), type(exc).__name__)
