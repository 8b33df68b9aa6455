"""Alembic environment: runs the migrations shipped in the ``tracker`` package."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from tracker.config import sqlalchemy_url
from tracker.models import Base

config = context.config
target_metadata = Base.metadata
VERSION_TABLE = "tracker_alembic_version"
# Several processes may migrate at once (a gateway and a worker starting together).
_LOCK_ID = 0x7472616B


def run_migrations_offline() -> None:
    context.configure(
        url=sqlalchemy_url(config.get_main_option("sqlalchemy.url") or ""),
        target_metadata=target_metadata,
        literal_binds=True,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        engine = create_engine(sqlalchemy_url(config.get_main_option("sqlalchemy.url") or ""), poolclass=pool.NullPool)
        with engine.connect() as conn:
            _run(conn)
        engine.dispose()
    else:
        _run(connection)


def _run(connection) -> None:  # type: ignore[no-untyped-def]
    connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": _LOCK_ID})
    # The lock is held by the session; end the implicit transaction so Alembic owns the
    # migration transactions (and autocommit blocks work for CREATE INDEX CONCURRENTLY).
    connection.commit()
    try:
        context.configure(connection=connection, target_metadata=target_metadata, version_table=VERSION_TABLE)
        with context.begin_transaction():
            context.run_migrations()
    finally:
        connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": _LOCK_ID})
        connection.commit()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
