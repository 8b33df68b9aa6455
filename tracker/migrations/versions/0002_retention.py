"""retention: index finished tasks by finish time for purges

Revision ID: 0002_retention
Revises: 0001
Create Date: 2026-11-22 21:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002_retention'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_WHERE = sa.text("status IN ('completed','failed','cancelled')")


def upgrade() -> None:
    # CONCURRENTLY: an existing store keeps taking writes while the index is built.
    with op.get_context().autocommit_block():
        op.create_index('ix_tracker_tasks_purge', 'tracker_tasks', ['finished_at'], unique=False,
                        postgresql_where=_WHERE, postgresql_concurrently=True, if_not_exists=True)


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index('ix_tracker_tasks_purge', table_name='tracker_tasks', postgresql_where=_WHERE,
                      postgresql_concurrently=True, if_exists=True)
