"""Lighter writes: the indexes of optional columns hold only the rows that have a value.

Every put wrote a page of each of the artifacts table's ten b-trees, whether the row had a
value for the indexed column or not. A row stored outside Prefect has no flow, task or run,
most rows never expire, so five of those pages held nothing a query looks for:

- the ``(store_id, flow_name | task_name | flow_run_id | task_run_id, created_at, id)`` and
  ``(store_id, expires_at)`` indexes become partial, ``WHERE <column> IS NOT NULL``. Every query
  that walks them compares the column (``flow_name = ?``, ``expires_at <= ?``), which implies
  ``IS NOT NULL``: SQLite and PostgreSQL use them as before;
- the ``last_accessed_at`` index (revision 0003) is dropped: eviction orders by
  ``coalesce(last_accessed_at, created_at)``, which it cannot answer, and nothing else reads it.

No row changes. The downgrade re-creates the full indexes.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "xpersist_artifacts"
#: Index name -> its columns; the first column after ``store_id`` is the optional one.
PARTIAL = {
    f"ix_{TABLE}_store_id_{column}_created_at_id": ["store_id", column, "created_at", "id"]
    for column in ("flow_name", "task_name", "flow_run_id", "task_run_id")
}
PARTIAL[f"ix_{TABLE}_store_id_expires_at"] = ["store_id", "expires_at"]
LAST_ACCESSED = f"ix_{TABLE}_last_accessed_at"


def upgrade() -> None:
    for name, columns in PARTIAL.items():
        present = sa.text(f"{columns[1]} IS NOT NULL")
        op.drop_index(name, table_name=TABLE)
        op.create_index(name, TABLE, columns, sqlite_where=present, postgresql_where=present)
    op.drop_index(LAST_ACCESSED, table_name=TABLE)


def downgrade() -> None:
    op.create_index(LAST_ACCESSED, TABLE, ["last_accessed_at"])
    for name, columns in PARTIAL.items():
        op.drop_index(name, table_name=TABLE)
        op.create_index(name, TABLE, columns)
