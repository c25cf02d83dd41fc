"""message index: drop `ix_message_gateway_status`, which no query uses

Each status change of a message is a new row version (status is indexed, so never a HOT
update), and a new version gets an entry in every index whose predicate it meets. This one, on
`(gateway, status)` for every routed message, took an entry at the claim, at `sent` and at
`delivered`: three per message of a wave. The two queries over one gateway's rows, the queue
depth per gateway and the hand-over of a down gateway's queue, both say `status =
'dispatching'` and are served by `ix_message_dispatching` (Postgres chose it with this index in
place too); a campaign's own queries go through its `(campaign_id, status, id)` index.

Revision ID: 0009_gateway_status_index
Revises: 0008_inbox_index
Create Date: 2026-12-07 05:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_gateway_status_index"
down_revision: str | None = "0008_inbox_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_message_gateway_status"
HAS_GATEWAY = sa.text("gateway IS NOT NULL")


def upgrade() -> None:
    op.drop_index(INDEX, table_name="message")


def downgrade() -> None:
    op.create_index(
        INDEX, "message", ["gateway", "status"], postgresql_where=HAS_GATEWAY, sqlite_where=HAS_GATEWAY
    )
