"""Parameter values and lineage: two child tables of the artifact rows.

``xpersist_artifact_parameters`` indexes the parameter values recorded in
``additional_metadata["parameter_values"]`` (one row per artifact and parameter: the canonical
JSON of the value, with a copy of the artifact's ``created_at``), so that
``store.query(parameters={"member": 2})`` walks the ``(name, value, created_at, artifact_id)``
index.

``xpersist_artifact_edges`` records lineage: the artifact (child) was computed from the parent
artifact named by its store's id, its key, and the version it was read as (``created_at``,
fingerprint, checksum). The child's edges go with its row (``ON DELETE CASCADE``); the
``(parent_store, parent_key, artifact_id)`` index answers "what was derived from this key".

The upgrade fills both tables from the rows' ``additional_metadata`` (as ``put`` does), so that
a downgrade (which drops them, leaving the artifact rows and their metadata untouched) followed
by an upgrade loses nothing. Offline (``db upgrade --sql``) the tables are created empty: the
script cannot read the rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

from xpersist_sql.db.index import edges_of, parameters_of

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
#: Keys compare byte-wise (as ``xpersist_artifacts.key`` does since revision 0004).
KeyType = sa.String(1024).with_variant(sa.String(1024, collation="C"), "postgresql")
PARAMETERS = "xpersist_artifact_parameters"
PARAMETER_INDEX = "ix_xpersist_artifact_parameters_name_value_created_at"
EDGES = "xpersist_artifact_edges"
EDGE_INDEX = "ix_xpersist_artifact_edges_parent_store_parent_key_artifact_id"


def upgrade() -> None:
    op.create_table(
        PARAMETERS,
        sa.Column("artifact_id", IdType, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("value", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["xpersist_artifacts.id"],
            name="fk_xpersist_artifact_parameters_artifact_id_xpersist_artifacts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("artifact_id", "name", name="pk_xpersist_artifact_parameters"),
    )
    op.create_index(PARAMETER_INDEX, PARAMETERS, ["name", "value", "created_at", "artifact_id"])
    op.create_table(
        EDGES,
        sa.Column("artifact_id", IdType, nullable=False),
        sa.Column("parent_store", sa.String(64), nullable=False),
        sa.Column("parent_key", KeyType, nullable=False),
        sa.Column("parent_created_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("parent_fingerprint", sa.String(256), nullable=True),
        sa.Column("parent_checksum", sa.String(128), nullable=True),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["xpersist_artifacts.id"],
            name="fk_xpersist_artifact_edges_artifact_id_xpersist_artifacts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "artifact_id", "parent_store", "parent_key", name="pk_xpersist_artifact_edges"
        ),
    )
    op.create_index(EDGE_INDEX, EDGES, ["parent_store", "parent_key", "artifact_id"])
    if not op.get_context().as_sql:
        _backfill()


def _backfill() -> None:
    """Index the parameter values and parents recorded in the rows' metadata."""
    bind = op.get_bind()
    rows = sa.table(
        "xpersist_artifacts",
        sa.column("id", IdType),
        sa.column("created_at", sa.DateTime(timezone=True)),
        sa.column("additional_metadata", sa.JSON().with_variant(JSONB(), "postgresql")),
    )
    text = sa.cast(rows.c.additional_metadata, sa.Text)
    candidates = sa.select(rows.c.id, rows.c.created_at, rows.c.additional_metadata).where(
        sa.or_(text.like("%parameter_values%"), text.like("%derived_from%"))
    )
    parameters = sa.table(
        PARAMETERS,
        sa.column("artifact_id", IdType),
        sa.column("name", sa.String(128)),
        sa.column("value", sa.String(256)),
        sa.column("created_at", sa.DateTime(timezone=True)),
    )
    edges = sa.table(
        EDGES,
        sa.column("artifact_id", IdType),
        sa.column("parent_store", sa.String(64)),
        sa.column("parent_key", KeyType),
        sa.column("parent_created_at", sa.DateTime(timezone=True)),
        sa.column("parent_fingerprint", sa.String(256)),
        sa.column("parent_checksum", sa.String(128)),
    )
    found_parameters: list[dict[str, Any]] = []
    found_edges: list[dict[str, Any]] = []
    for artifact_id, created_at, metadata in bind.execute(candidates).all():
        if not isinstance(metadata, dict):
            continue
        found_parameters.extend(
            {"artifact_id": artifact_id, "name": name, "value": value, "created_at": created_at}
            for name, value in sorted(parameters_of(metadata).items())
        )
        found_edges.extend({"artifact_id": artifact_id, **edge} for edge in edges_of(metadata))
    if found_parameters:
        bind.execute(parameters.insert(), found_parameters)
    if found_edges:
        bind.execute(edges.insert(), found_edges)


def downgrade() -> None:
    op.drop_index(EDGE_INDEX, table_name=EDGES)
    op.drop_table(EDGES)
    op.drop_index(PARAMETER_INDEX, table_name=PARAMETERS)
    op.drop_table(PARAMETERS)
