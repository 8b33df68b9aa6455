"""notification origin: who made a notification, set by the server (rule, api or rest)

The notifier used to pick a rule's targets from ``metadata.rule``, which a client posting to
``POST /notifications`` could set. The origin column is written only by server code, so a
client post can never be taken for a rule's alert.

Existing rows: those made by a rule or a digest (a server-made dedup key - not one of the
``rest:`` keys given to client posts - and a ``rule`` in their metadata) become ``rule``;
everything else ``rest``, the least trusted origin, because old client posts cannot be told
apart from ``Tracker.notify`` ones.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision: str = '0007_notification_origin'
down_revision: str | None = '0006_write_path'


def upgrade() -> None:
    # A constant default: PostgreSQL adds the column without rewriting the table.
    op.add_column('tracker_notifications', sa.Column('origin', sa.Text(), server_default='rest', nullable=False))
    op.create_check_constraint('tracker_notifications_origin_check', 'tracker_notifications',
                               "origin IN ('rule','api','rest')")
    op.execute("UPDATE tracker_notifications SET origin = 'rule' "
               "WHERE dedup_key IS NOT NULL AND dedup_key NOT LIKE 'rest:%' AND metadata ? 'rule'")


def downgrade() -> None:
    op.drop_constraint('tracker_notifications_origin_check', 'tracker_notifications', type_='check')
    op.drop_column('tracker_notifications', 'origin')
