"""workers: one row per Celery worker (node) with its history, one per worker process

``tracker_workers`` held the last heartbeat of each pool process, only while it ran a task.
It becomes the worker record (node name, pid, concurrency, queues, start, graceful stop,
last heartbeat), kept after the worker is gone; the per-process heartbeats (CPU, RSS,
running task ids, tasks processed) move to ``tracker_worker_processes``. The old rows were a
short-lived cache of heartbeats: they are not carried over.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004_workers'
down_revision: str | None = '0003_log_search'


def _process_columns() -> list[sa.Column[Any]]:
    """The heartbeat columns of one pool process: the old ``tracker_workers`` had them, and
    ``tracker_worker_processes`` keeps them. New objects each call: a column joins one table."""
    return [
        sa.Column('worker_id', sa.Text(), nullable=False),
        sa.Column('hostname', sa.Text(), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('cpu_percent', sa.Double(), nullable=True),
        sa.Column('rss_bytes', sa.BigInteger(), nullable=True),
    ]


def upgrade() -> None:
    op.drop_table('tracker_workers')
    op.create_table(
        'tracker_workers',
        sa.Column('hostname', sa.Text(), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=True),
        sa.Column('concurrency', sa.Integer(), nullable=True),
        sa.Column('queues', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
        sa.PrimaryKeyConstraint('hostname'),
    )
    op.create_index('ix_tracker_workers_heartbeat', 'tracker_workers', ['heartbeat_at'], unique=False)
    op.create_table(
        'tracker_worker_processes',
        *_process_columns(),
        sa.Column('active', postgresql.ARRAY(sa.Text()), server_default=sa.text("'{}'::text[]"), nullable=False),
        sa.Column('processed', sa.BigInteger(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('worker_id'),
    )
    op.create_index('ix_tracker_worker_processes_host', 'tracker_worker_processes', ['hostname', 'heartbeat_at'],
                    unique=False)
    op.create_index('ix_tracker_worker_processes_heartbeat', 'tracker_worker_processes', ['heartbeat_at'],
                    unique=False)


def downgrade() -> None:
    op.drop_index('ix_tracker_worker_processes_heartbeat', table_name='tracker_worker_processes')
    op.drop_index('ix_tracker_worker_processes_host', table_name='tracker_worker_processes')
    op.drop_table('tracker_worker_processes')
    op.drop_index('ix_tracker_workers_heartbeat', table_name='tracker_workers')
    op.drop_table('tracker_workers')
    op.create_table(
        'tracker_workers',
        *_process_columns(),
        sa.Column('active', sa.Integer(), server_default='0', nullable=False),
        sa.PrimaryKeyConstraint('worker_id'),
    )
