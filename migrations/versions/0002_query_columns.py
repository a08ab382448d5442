"""Promote the Prefect context to indexed columns and tags to an indexed table.

Adds ``flow_name``, ``task_name``, ``flow_run_id`` and ``task_run_id`` to the artifacts, the
``xpersist_artifact_tags`` table (with a copy of each artifact's ``created_at``, so that
"newest with tag T" is one index range) and the indexes queries use, and backfills them from each
row's ``additional_metadata`` (tags from its ``task_tags`` and ``tags`` lists).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
PROMOTED = {"flow_name": 512, "task_name": 512, "flow_run_id": 64, "task_run_id": 64}
INDEXES = {
    "ix_xpersist_artifacts_flow_name_created_at_id": ["flow_name", "created_at", "id"],
    "ix_xpersist_artifacts_task_name_created_at_id": ["task_name", "created_at", "id"],
    "ix_xpersist_artifacts_serializer_created_at_id": ["serializer", "created_at", "id"],
    "ix_xpersist_artifacts_flow_run_id": ["flow_run_id"],
    "ix_xpersist_artifacts_task_run_id": ["task_run_id"],
}
#: (tag, created_at, artifact_id): "newest N with tag T" walks it and stops after N entries.
TAG_INDEX = "ix_xpersist_artifact_tags_tag_created_at_artifact_id"


def _backfill() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        sets = ", ".join(
            f"{name} = LEFT(additional_metadata ->> '{name}', {length})"
            for name, length in PROMOTED.items()
        )
        op.execute(f"UPDATE xpersist_artifacts SET {sets}")
        for field in ("task_tags", "tags"):
            op.execute(
                "INSERT INTO xpersist_artifact_tags (artifact_id, tag, created_at) "
                "SELECT a.id, LEFT(t.tag, 256), a.created_at FROM xpersist_artifacts a, "
                f"jsonb_array_elements_text(a.additional_metadata -> '{field}') AS t(tag) "
                f"WHERE jsonb_typeof(a.additional_metadata -> '{field}') = 'array' "
                "ON CONFLICT DO NOTHING"
            )
    else:
        sets = ", ".join(
            f"{name} = substr(CAST(json_extract(additional_metadata, '$.{name}') AS TEXT), 1, "
            f"{length})"
            for name, length in PROMOTED.items()
        )
        op.execute(f"UPDATE xpersist_artifacts SET {sets}")
        for field in ("task_tags", "tags"):
            op.execute(
                "INSERT OR IGNORE INTO xpersist_artifact_tags (artifact_id, tag, created_at) "
                "SELECT a.id, substr(CAST(t.value AS TEXT), 1, 256), a.created_at "
                "FROM xpersist_artifacts a, "
                f"json_each(a.additional_metadata, '$.{field}') AS t "
                f"WHERE json_type(a.additional_metadata, '$.{field}') = 'array'"
            )


def upgrade() -> None:
    with op.batch_alter_table("xpersist_artifacts") as batch:
        for name, length in PROMOTED.items():
            batch.add_column(sa.Column(name, sa.String(length), nullable=True))
    for name, columns in INDEXES.items():
        op.create_index(name, "xpersist_artifacts", columns)
    op.create_table(
        "xpersist_artifact_tags",
        sa.Column("artifact_id", IdType, nullable=False),
        sa.Column("tag", sa.String(256), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["artifact_id"],
            ["xpersist_artifacts.id"],
            name="fk_xpersist_artifact_tags_artifact_id_xpersist_artifacts",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("artifact_id", "tag", name="pk_xpersist_artifact_tags"),
    )
    op.create_index(TAG_INDEX, "xpersist_artifact_tags", ["tag", "created_at", "artifact_id"])
    _backfill()


def downgrade() -> None:
    op.drop_index(TAG_INDEX, table_name="xpersist_artifact_tags")
    op.drop_table("xpersist_artifact_tags")
    for name in INDEXES:
        op.drop_index(name, table_name="xpersist_artifacts")
    with op.batch_alter_table("xpersist_artifacts") as batch:
        for name in PROMOTED:
            batch.drop_column(name)
