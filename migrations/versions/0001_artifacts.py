"""Create the artifacts table.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "xpersist_artifacts",
        sa.Column("id", IdType, primary_key=True, autoincrement=True),
        sa.Column("key", sa.String(1024), nullable=False),
        sa.Column("serializer", sa.String(128), nullable=False),
        sa.Column("load_kwargs", JSONType, nullable=False),
        sa.Column("dump_kwargs", JSONType, nullable=False),
        sa.Column("additional_metadata", JSONType, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("checksum", sa.String(128), nullable=True),
        sa.Column("fingerprint", sa.String(256), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("versions", JSONType, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_xpersist_artifacts"),
        sa.UniqueConstraint("key", name="uq_xpersist_artifacts_key"),
    )
    op.create_index("ix_xpersist_artifacts_created_at", "xpersist_artifacts", ["created_at"])
    op.create_index("ix_xpersist_artifacts_expires_at", "xpersist_artifacts", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_xpersist_artifacts_expires_at", table_name="xpersist_artifacts")
    op.drop_index("ix_xpersist_artifacts_created_at", table_name="xpersist_artifacts")
    op.drop_table("xpersist_artifacts")
