"""Store identity: a stores table, and every artifact row belongs to one store.

Adds ``xpersist_stores`` (the id in each store's ``.xpersist_sql/store.json`` marker, its root)
and ``xpersist_artifacts.store_id``; keys become unique per store, and the query indexes lead with
``store_id`` so that several stores can share one database and each reads only its own rows. On
PostgreSQL the key column compares byte-wise (collation ``C``), so the keys inside a key are one
index range.

Existing rows all belong to the one store that used the index before this revision: the upgrade
needs that store's id and root, given by ``xpersist-sql db upgrade --store ROOT`` (which writes
the store's marker if it has none); an index without rows needs nothing.

Downgrading keeps the rows of one store only if the index holds a single store; it refuses
otherwise, since revision 0003 had keys unique across the whole database.

Offline (``db upgrade --sql``), the script cannot count the rows: given the store, it records the
store only if the table holds rows (``INSERT ... SELECT ... WHERE EXISTS``) and gives them to it;
from an empty database it needs nothing. The offline downgrade checks on the server that at most
one store's rows are present (PostgreSQL; SQLite's table rebuilds have no offline form).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
TABLE = "xpersist_artifacts"
#: Store information handed over by ``xpersist-sql db upgrade`` (``config.attributes``).
STORE_ATTRIBUTE = "xpersist_store"

OLD_INDEXES = {
    "ix_xpersist_artifacts_created_at": ["created_at"],
    "ix_xpersist_artifacts_expires_at": ["expires_at"],
    "ix_xpersist_artifacts_flow_name_created_at_id": ["flow_name", "created_at", "id"],
    "ix_xpersist_artifacts_task_name_created_at_id": ["task_name", "created_at", "id"],
    "ix_xpersist_artifacts_serializer_created_at_id": ["serializer", "created_at", "id"],
    "ix_xpersist_artifacts_flow_run_id": ["flow_run_id"],
    "ix_xpersist_artifacts_task_run_id": ["task_run_id"],
}
NEW_INDEXES = {
    "ix_xpersist_artifacts_store_id_created_at_id": ["store_id", "created_at", "id"],
    "ix_xpersist_artifacts_store_id_expires_at": ["store_id", "expires_at"],
    "ix_xpersist_artifacts_store_id_flow_name_created_at_id": [
        "store_id",
        "flow_name",
        "created_at",
        "id",
    ],
    "ix_xpersist_artifacts_store_id_task_name_created_at_id": [
        "store_id",
        "task_name",
        "created_at",
        "id",
    ],
    "ix_xpersist_artifacts_store_id_serializer_created_at_id": [
        "store_id",
        "serializer",
        "created_at",
        "id",
    ],
    "ix_xpersist_artifacts_store_id_flow_run_id_created_at_id": [
        "store_id",
        "flow_run_id",
        "created_at",
        "id",
    ],
    "ix_xpersist_artifacts_store_id_task_run_id_created_at_id": [
        "store_id",
        "task_run_id",
        "created_at",
        "id",
    ],
}
FK = "fk_xpersist_artifacts_store_id_xpersist_stores"


STORES = sa.table(
    "xpersist_stores",
    sa.column("id", IdType),
    sa.column("uid", sa.String(32)),
    sa.column("root", sa.String(2048)),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def _given_store() -> dict[str, str] | None:
    given = op.get_context().config.attributes.get(STORE_ATTRIBUTE)
    store = given() if callable(given) else given
    return store or None


def _offline_store_of_existing_rows() -> str | None:
    """Emit the SQL that records the given store if rows exist; return its uid (None: none)."""
    store = _given_store()
    if store is None:
        return None  # from an empty database: no rows to give (checked by ``migration_sql``)
    rows = sa.table(TABLE, sa.column("id", IdType))
    op.execute(
        STORES.insert().from_select(
            ["uid", "root", "created_at"],
            sa.select(
                sa.literal(store["uid"], sa.String(32)),
                sa.literal(store["root"], sa.String(2048)),
                sa.func.current_timestamp(),
            ).where(sa.exists(sa.select(rows.c.id))),
        )
    )
    return store["uid"]


def _store_for_existing_rows() -> int | None:
    bind = op.get_bind()
    count = bind.execute(sa.text(f"SELECT COUNT(*) FROM {TABLE}")).scalar() or 0
    if not count:
        return None
    store = _given_store()
    if store is None:
        raise RuntimeError(
            f"this index holds {count} artifact rows written before stores had an identity; "
            "the upgrade must know the store they belong to: run `xpersist-sql db upgrade "
            "--store ROOT` (with --db URL for a database outside the store), ROOT being the "
            "directory or URL of that store"
        )
    stores = STORES
    created = datetime.now(timezone.utc)
    if bind.dialect.name == "sqlite":
        created = created.replace(tzinfo=None)
    bind.execute(stores.insert().values(uid=store["uid"], root=store["root"], created_at=created))
    found = bind.execute(sa.select(stores.c.id).where(stores.c.uid == store["uid"])).scalar()
    assert found is not None
    return int(found)


def upgrade() -> None:
    op.create_table(
        "xpersist_stores",
        sa.Column("id", IdType, primary_key=True, autoincrement=True),
        sa.PrimaryKeyConstraint("id", name="pk_xpersist_stores"),
        # the id in the store's marker, unique: the store's identity
        sa.Column("uid", sa.String(32), nullable=False),
        sa.UniqueConstraint("uid", name="uq_xpersist_stores_uid"),
        # where it was last opened for writing, and when it was first recorded
        sa.Column("root", sa.String(2048), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    offline = op.get_context().as_sql
    store_id = None if offline else _store_for_existing_rows()
    uid = _offline_store_of_existing_rows() if offline else None
    with op.batch_alter_table(TABLE) as batch:
        batch.add_column(sa.Column("store_id", IdType, nullable=True))
    if store_id is not None:
        op.execute(sa.text(f"UPDATE {TABLE} SET store_id = :id").bindparams(id=store_id))
    if uid is not None:
        rows = sa.table(TABLE, sa.column("store_id", IdType))
        op.execute(
            rows.update().values(
                store_id=sa.select(STORES.c.id).where(STORES.c.uid == uid).scalar_subquery()
            )
        )
    for name in OLD_INDEXES:
        op.drop_index(name, table_name=TABLE)
    postgres = op.get_bind().dialect.name == "postgresql"
    with op.batch_alter_table(TABLE) as batch:
        batch.alter_column("store_id", existing_type=IdType, nullable=False)
        batch.create_foreign_key(FK, "xpersist_stores", ["store_id"], ["id"])
        batch.drop_constraint("uq_xpersist_artifacts_key", type_="unique")
        if postgres:
            batch.alter_column(
                "key",
                existing_type=sa.String(1024),
                type_=sa.String(1024, collation="C"),
                existing_nullable=False,
            )
        batch.create_unique_constraint("uq_xpersist_artifacts_store_id_key", ["store_id", "key"])
    for name, columns in NEW_INDEXES.items():
        op.create_index(name, TABLE, columns)


SEVERAL_STORES = (
    "this index holds the artifacts of {} stores; revision 0003 allows each key once in a whole "
    "database, so it cannot be downgraded without losing rows. Give each store its own database "
    "first"
)


def downgrade() -> None:
    bind = op.get_bind()
    postgres = bind.dialect.name == "postgresql"
    if op.get_context().as_sql:
        if postgres:  # the check runs where the rows are, when the script is applied
            message = SEVERAL_STORES.format("several").replace("'", "''")
            op.execute(
                "DO $$ BEGIN IF (SELECT COUNT(DISTINCT store_id) FROM "
                f"{TABLE}) > 1 THEN RAISE EXCEPTION '{message}'; END IF; END $$"
            )
    else:
        stores = bind.execute(sa.text(f"SELECT COUNT(DISTINCT store_id) FROM {TABLE}")).scalar()
        if stores and stores > 1:
            raise RuntimeError(SEVERAL_STORES.format(stores))
    for name in NEW_INDEXES:
        op.drop_index(name, table_name=TABLE)
    with op.batch_alter_table(TABLE) as batch:
        batch.drop_constraint("uq_xpersist_artifacts_store_id_key", type_="unique")
        batch.drop_constraint(FK, type_="foreignkey")
        if postgres:
            batch.alter_column(
                "key",
                existing_type=sa.String(1024, collation="C"),
                type_=sa.String(1024),
                existing_nullable=False,
            )
        batch.create_unique_constraint("uq_xpersist_artifacts_key", ["key"])
        batch.drop_column("store_id")
    for name, columns in OLD_INDEXES.items():
        op.create_index(name, TABLE, columns)
    op.drop_table("xpersist_stores")
