"""task arguments: args (JSON list) and kwargs (JSON object), redacted; rerun_of

The ``args`` text column held Celery's ``argsrepr``/``kwargsrepr`` in clear, secrets
included, and nothing showed it. It becomes JSONB holding the redacted positional
arguments; the old text is dropped rather than converted, because it was never redacted.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0005_task_args'
down_revision: str | None = '0004_workers'


def upgrade() -> None:
    op.alter_column('tracker_tasks', 'args', type_=postgresql.JSONB(), postgresql_using='NULL',
                    existing_nullable=True)
    op.add_column('tracker_tasks', sa.Column('kwargs', postgresql.JSONB(), nullable=True))
    op.add_column('tracker_tasks', sa.Column('rerun_of', sa.Text(), nullable=True))
    op.create_index('ix_tracker_tasks_rerun_of', 'tracker_tasks', ['rerun_of'], unique=False,
                    postgresql_where=sa.text('rerun_of IS NOT NULL'))


def downgrade() -> None:
    op.drop_index('ix_tracker_tasks_rerun_of', table_name='tracker_tasks')
    op.drop_column('tracker_tasks', 'rerun_of')
    op.drop_column('tracker_tasks', 'kwargs')
    op.alter_column('tracker_tasks', 'args', type_=sa.Text(), postgresql_using='args::text', existing_nullable=True)
