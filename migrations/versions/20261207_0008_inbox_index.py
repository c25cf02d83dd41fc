"""inbox index: drop `ix_receipt_inbox_gateway_provider`, which no query uses

Every receipt of a wave is inserted into `receipt_inbox` once and deleted once; each index on it
is written for each receipt. The applier reads the inbox in `(attempts, id)` order and matches
receipts to segments by the segments' own `(gateway, provider_id)` key; nothing looks a receipt
up by its provider id, so this index, one of its four, only cost writes.

Revision ID: 0008_inbox_index
Revises: 0007_hot_room
Create Date: 2026-12-07 02:30:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008_inbox_index"
down_revision: str | None = "0007_hot_room"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

INDEX = "ix_receipt_inbox_gateway_provider"


def upgrade() -> None:
    op.drop_index(INDEX, table_name="receipt_inbox")


def downgrade() -> None:
    op.create_index(INDEX, "receipt_inbox", ["gateway", "provider_id"], unique=False)
