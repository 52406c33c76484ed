"""The studies registry: SQLAlchemy 2.x ORM tables in the Optuna storage's database.

The registry records what the API promised a tenant (a study id, its spec, its
Ray job); Optuna's own tables record what the search did. Keeping both in one
database means one backup, one Secret and one place to look. Table names carry
a ``ktg_api_`` prefix because Optuna already owns ``studies`` and ``trials``.

The schema is created at start-up and migrated forward from the version kept in
``ktg_api_schema_version`` (one row), under a PostgreSQL advisory lock so that
several API replicas starting at once cannot migrate twice.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Dialect,
    Engine,
    Index,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker
from sqlalchemy.types import TypeDecorator

from search.study.storage import sqlalchemy_url

SCHEMA_VERSION = 2


def _add_admitted_at(conn: Connection) -> None:
    """Version 2: studies wait for a slot of their tenant's quota (``admitted_at``); every
    study already submitted holds one."""
    conn.execute(text("ALTER TABLE ktg_api_studies ADD COLUMN admitted_at TIMESTAMP WITH TIME ZONE"))
    conn.execute(text("UPDATE ktg_api_studies SET admitted_at = submitted_at WHERE submitted_at IS NOT NULL"))


# migration i (0-based) takes the schema from version i+1 to i+2; append, never edit.
MIGRATIONS: tuple[Callable[[Connection], None], ...] = (_add_admitted_at,)
# Arbitrary constant naming the "migrating the ktg registry" advisory lock.
_MIGRATION_LOCK = 0x6B7467  # "ktg"


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps in UTC, aware on the way out whatever the database (SQLite keeps none)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return value.astimezone(UTC) if value is not None and value.tzinfo else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base of the registry tables (not Optuna's)."""


class StudyRow(Base):
    """One study a tenant asked for: its spec, where it runs, and the state last seen."""

    __tablename__ = "ktg_api_studies"
    __table_args__ = (
        UniqueConstraint("tenant", "name", name="uq_ktg_api_studies_tenant_name"),
        Index("ix_ktg_api_studies_tenant_created", "tenant", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(64))
    # The Optuna study name, "tenant.name": unique in the storage across tenants.
    optuna_name: Mapped[str] = mapped_column(String(128), unique=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    # queued | running | succeeded | failed | cancelled (what users see).
    state: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Ray Jobs: the submission id is the study id (a retried submit cannot start a
    # second search); job_id is Ray's own id, known once the job was accepted.
    submission_id: Mapped[str] = mapped_column(String(64), unique=True)
    submitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # When the study got one of its tenant's KTG_MAX_RUNNING_STUDIES slots; until then
    # it waits as "queued" and Ray never hears of it (api.lifecycle.StudyLifecycle.admit).
    admitted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    ray_job_id: Mapped[str | None] = mapped_column(String(64))
    job_status: Mapped[str | None] = mapped_column(String(16))  # last Ray JobStatus seen
    cancel_requested_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    message: Mapped[str | None] = mapped_column(Text)  # why it failed, from Ray (password redacted)
    out_dir: Mapped[str] = mapped_column(Text)


class SchemaVersionRow(Base):
    """The registry schema's version: one row, id 1."""

    __tablename__ = "ktg_api_schema_version"

    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int]
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


def make_engine(url: str, pool_size: int = 10) -> Engine:
    """An engine that survives database restarts (pre-ping) and never waits forever to connect."""
    url = sqlalchemy_url(url)
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})
    return create_engine(url, pool_pre_ping=True, pool_recycle=300, pool_size=pool_size, max_overflow=pool_size * 2,
                         pool_timeout=10, connect_args={"connect_timeout": 10})


def make_sessions(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: handlers build responses from rows after committing.
    return sessionmaker(engine, expire_on_commit=False)


class SchemaError(Exception):
    """The database holds a registry schema this code cannot use."""


def init_schema(engine: Engine) -> int:
    """Create the registry tables, or migrate them forward; return the schema version.

    Refuses a database migrated by a newer API rather than guessing at its layout.
    """
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
        Base.metadata.create_all(conn, tables=[Base.metadata.tables[SchemaVersionRow.__tablename__]])
        version = conn.execute(select(SchemaVersionRow.version).where(SchemaVersionRow.id == 1)).scalar_one_or_none()
        if version is None:  # fresh database: build the current layout and stamp it
            Base.metadata.create_all(conn)
            conn.execute(insert(SchemaVersionRow).values(id=1, version=SCHEMA_VERSION, updated_at=utcnow()))
            return SCHEMA_VERSION
        if version > SCHEMA_VERSION:
            raise SchemaError(f"the registry schema in this database is version {version}, newer than this API "
                              f"(version {SCHEMA_VERSION}); upgrade the API")
        for migrate in MIGRATIONS[version - 1:]:
            migrate(conn)
        Base.metadata.create_all(conn)  # tables new since that version (creates only what is missing)
        if version != SCHEMA_VERSION:
            conn.execute(update(SchemaVersionRow).where(SchemaVersionRow.id == 1)
                         .values(version=SCHEMA_VERSION, updated_at=utcnow()))
        return SCHEMA_VERSION
