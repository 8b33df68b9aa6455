"""log search: a stored tsvector column with its GIN index

A search ordered by time used to recompute ``to_tsvector`` for every row it walked; the
stored column makes that check a lookup.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003_log_search'
down_revision: str | None = '0002_retention'


def upgrade() -> None:
    op.add_column('tracker_logs', sa.Column(
        'search', postgresql.TSVECTOR(), sa.Computed("to_tsvector('simple', message)", persisted=True),
        nullable=True))
    op.create_index('ix_tracker_logs_search_vector', 'tracker_logs', ['search'], unique=False,
                    postgresql_using='gin')
    op.drop_index('ix_tracker_logs_search', table_name='tracker_logs', postgresql_using='gin', if_exists=True)


def downgrade() -> None:
    op.create_index('ix_tracker_logs_search', 'tracker_logs', [sa.literal_column("to_tsvector('simple', message)")],
                    unique=False, postgresql_using='gin')
    op.drop_index('ix_tracker_logs_search_vector', table_name='tracker_logs', postgresql_using='gin')
    op.drop_column('tracker_logs', 'search')
