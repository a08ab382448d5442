"""Alembic environment of xpersist_sql.

The connection comes from ``config.attributes["connection"]`` (xpersist_sql's own engine) or, for a
plain ``alembic`` command line, from ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from xpersist_sql.db.engine import create_index_engine
from xpersist_sql.db.tables import METADATA

config = context.config
VERSION_TABLE = config.get_main_option("version_table") or "xpersist_sql_alembic_version"


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=METADATA,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        compare_type=True,
        # SQLite and PostgreSQL both run DDL inside transactions: a schema is created or
        # upgraded as a whole or not at all, and no other process sees it half-way.
        transactional_ddl=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_offline() -> None:
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=METADATA,
        version_table=VERSION_TABLE,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection in config.attributes")
    engine = create_index_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
            conn.commit()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
