"""What a tenant may name on the server's disk: paths inside the operator's datasets folder.

Over HTTP a path field (a spec's ``data_dir``; later a teacher checkpoint) is a
path relative to ``KTG_DATASETS_DIR``. A tenant may read that folder, except
its ``tenants/`` subfolder, where only ``tenants/<that tenant>/`` is its own.
Everything else is refused with one answer that names the field and never
depends on what exists: no absolute path, no ``..``, no symlink leading out of
what the tenant may read, no other tenant's folder. The answer for a path that
does not exist is the answer for one that does (the job fails later, in the
study's terms), so the API cannot be used to probe the server's disk.

The check resolves symlinks as the tree stands now. A tenant who can write into
the datasets volume could replace a checked folder by a link afterwards, so the
operator gives tenants no write access there (docs/security.md).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

from ktg.data import dataset_facts, dataset_names
from ktg.errors import KtgError

TENANTS = "tenants"
# Longer paths only serve to provoke "File name too long" from the operating system.
MAX_PATH_CHARS = 1024
MAX_PART_BYTES = 255


class Unconfined(KtgError):
    """A path a tenant may not name; ``str()`` is the one line to show, starting with the field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


def _refuse(field: str, tenant: str) -> Unconfined:
    return Unconfined(field, "must be a path relative to the service's datasets folder, or under "
                             f"{TENANTS}/{tenant}/ for your own data; no absolute path, no '..', "
                             "no link leading elsewhere, no other tenant's folder")


def folderless_datasets() -> list[str]:
    """The datasets a study may use without naming a folder (Fashion-MNIST: Debian's package folder)."""
    return [name for name in dataset_names() if dataset_facts(name).folder != "required"]


def confine(datasets_dir: Path | None, tenant: str, path: str, field: str) -> Path:
    """The absolute, resolved path a tenant's relative ``path`` names, or ``Unconfined``.

    ``datasets_dir`` is the operator's folder, already resolved (``Settings``);
    None refuses every path. Touches the disk only to resolve symlinks, so it
    belongs off the event loop.
    """
    if datasets_dir is None:
        raise Unconfined(field, "this service has no datasets folder (the operator's KTG_DATASETS_DIR), so no "
                                f"path is accepted; allowed: the datasets that need none "
                                f"({', '.join(folderless_datasets())}) without {field}")
    if not isinstance(path, str) or not path or len(path) > MAX_PATH_CHARS or "\0" in path:
        raise _refuse(field, tenant)
    relative = PurePosixPath(path)
    parts = relative.parts
    if (relative.is_absolute() or ".." in parts or any(len(p.encode()) > MAX_PART_BYTES for p in parts)
            or (parts[:1] and parts[0].lower() == TENANTS and parts[1:2] != (tenant,))):
        raise _refuse(field, tenant)
    try:
        # strict=False: a missing tail stays as written, so existence changes nothing below
        real = (datasets_dir / relative).resolve()
        tenants = (datasets_dir / TENANTS).resolve()
        own = (datasets_dir / TENANTS / tenant).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a name the system refuses
        raise _refuse(field, tenant) from None
    shared = real.is_relative_to(datasets_dir) and not real.is_relative_to(tenants)
    if not (shared or real.is_relative_to(own)):
        raise _refuse(field, tenant)
    return real


def confine_data_dir(datasets_dir: Path | None, tenant: str, dataset: str, data_dir: str | None) -> Path | None:
    """The folder a study's job reads for ``dataset``: ``data_dir`` confined, or None when it names none.

    A dataset that cannot be read without a folder needs one now, rather than
    a job that fails later.
    """
    if data_dir is not None:
        return confine(datasets_dir, tenant, data_dir, "data_dir")
    if dataset_facts(dataset).folder == "required":
        where = ("a path relative to the service's datasets folder" if datasets_dir is not None else
                 f"none: this service has no datasets folder; allowed datasets: {', '.join(folderless_datasets())}")
        raise Unconfined("data_dir", f"{dataset} reads its files from a folder; allowed: {where}")
    return None
