"""write path: the automatic per-task figures as columns of the task row

Every finished task used to add five rows to ``tracker_metrics`` (``task.queue_wait``,
``task.run_time``, ``task.cpu_time``, ``task.memory_growth``, ``task.retries``): five more
rows and fifteen index entries per task on the write path. They become columns of the task
row, written with the states the row gets anyway; ``task.retries`` is the existing
``retries`` column. The queries read them back as samples of those names (see
``tracker.figures``), together with rows already stored and the rows of retried attempts.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0006_write_path'
down_revision: str | None = '0005_task_args'

_COLUMNS = ('queue_wait', 'run_time', 'cpu_time', 'memory_growth')


def upgrade() -> None:
    # Nullable without a default: PostgreSQL adds them without rewriting the table.
    for name in _COLUMNS:
        op.add_column('tracker_tasks', sa.Column(name, sa.Double(), nullable=True))


def downgrade() -> None:
    for name in reversed(_COLUMNS):
        op.drop_column('tracker_tasks', name)
