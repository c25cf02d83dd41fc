"""claim index: message (campaign_id, status, id) replaces (campaign_id, status)

The dispatcher claims a campaign's queued messages in id order. With (campaign_id, status) alone
Postgres walks the primary key past every message already sent (or sorts all queued ones): each
claim grew with the campaign's progress, two seconds per claim half-way through a million. With
`id` as the index's last column the claim is a short range scan at any size. Building it blocks
writes to `message` for a while on a big table: upgrade between waves.

Revision ID: 0003_claim_index
Revises: 0002_reporting
Create Date: 2026-11-22 10:50:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003_claim_index"
down_revision: str | None = "0002_reporting"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW = "ix_message_campaign_status_id"
OLD = "ix_message_campaign_status"


def upgrade() -> None:
    op.create_index(NEW, "message", ["campaign_id", "status", "id"], unique=False)
    op.drop_index(OLD, table_name="message")


def downgrade() -> None:
    op.create_index(OLD, "message", ["campaign_id", "status"], unique=False)
    op.drop_index(NEW, table_name="message")
