"""Record when each artifact was last read, for size-bounded (LRU) eviction.

Adds the nullable ``last_accessed_at`` column and its index. Existing rows keep ``NULL``: eviction
orders artifacts by ``COALESCE(last_accessed_at, created_at)``, so an artifact never read since the
upgrade counts as last used when it was created.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_xpersist_artifacts_last_accessed_at"


def upgrade() -> None:
    with op.batch_alter_table("xpersist_artifacts") as batch:
        batch.add_column(sa.Column("last_accessed_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(INDEX, "xpersist_artifacts", ["last_accessed_at"])


def downgrade() -> None:
    op.drop_index(INDEX, table_name="xpersist_artifacts")
    with op.batch_alter_table("xpersist_artifacts") as batch:
        batch.drop_column("last_accessed_at")
