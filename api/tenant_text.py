"""What a tenant reads about a failure: short, in the terms of its own spec.

A study's ``message`` and a trial's ``error`` come from the search job's output
and the training's exceptions, which name server paths (the studies folder, the
datasets folder, the install), the job's command line and Python tracebacks. A
tenant sees one line: the cause, with every absolute path replaced by the
``data_dir`` the tenant wrote when the path lies under it, else by
``<server path>``. The full text goes to the service's log, never to a tenant.
"""

from __future__ import annotations

import re

MAX_CHARS = 300
SERVER_PATH = "<server path>"
# An absolute path inside a message: from a slash at a word start to the next quote,
# space or closing bracket ("/srv/x/y", "'/srv/x'", "[Errno 2] ... '/a b'" stops at the space).
_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s'\"()\[\]{},;]*")
# The one line `ktg <command>` prints for a user error (ktg.cli), or the last line of a traceback.
_KTG_ERROR = re.compile(r"^ktg [\w-]+: error: (?P<cause>.+)$")
_EXCEPTION = re.compile(r"^(?P<cause>(?:[\w.]+\.)?\w*(?:Error|Exception|Interrupt)\b.*)$")
_COMMAND_LINE = re.compile(r"ktg search --spec-json.*")


def tenant_text(text: str, data_dir: str | None = None) -> str:
    """``text`` as a tenant may read it: one line, at most ``MAX_CHARS``, no server path."""
    one_line = " ".join(_COMMAND_LINE.sub("the search job", text).split())

    def shown(match: re.Match[str]) -> str:
        path = match.group(0).rstrip(".:")
        tail = match.group(0)[len(path):]
        if data_dir and not data_dir.startswith("/"):
            written = data_dir.strip("/")
            at = (path + "/").find(f"/{written}/")
            if written and at >= 0:
                return (written + path[at + 1 + len(written):]) + tail
        return SERVER_PATH + tail

    clean = _ABSOLUTE_PATH.sub(shown, one_line)
    return clean if len(clean) <= MAX_CHARS else clean[:MAX_CHARS - 1].rstrip() + "…"


def failure_cause(output: str) -> str | None:
    """The cause a failed job's output names: the ``ktg`` error line, else the exception
    that ended a traceback (the last one); None when the output names neither."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    for pattern in (_KTG_ERROR, _EXCEPTION):
        for line in reversed(lines):
            found = pattern.match(line)
            if found:
                return found.group("cause")
    return None
