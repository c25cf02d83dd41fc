"""hot room: free space on `message` and `sms_segment` pages for updates that touch no index

Postgres makes an update HOT (a new row version on the same page, no new index entries) only if
no indexed column changes and the page has room. Two updates on the send path qualify:

- the in-flight mark on `message` (claim token and `updated_at`; the lease is kept while it has
  two thirds left, see `campaigns.sending._mark_inflight`), one per message of a wave;
- a segment's final receipt on `sms_segment` (status, receipt time, stat, err).

With pages filled to 100 % neither found room, and each cost an entry in every index of its table
(six on `message`). A lower fillfactor keeps room on the pages that inserts and moved row versions
fill from now on; existing pages are left as they are (no rewrite).

Revision ID: 0007_hot_room
Revises: 0006_segment_receipts
Create Date: 2026-12-07 02:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007_hot_room"
down_revision: str | None = "0006_segment_receipts"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Per table: the share of each page that inserts may fill. A `message` row is ~170 bytes and most
# of it is recipient fields; a segment row is ~100 bytes and gains ~30 with its receipt.
FILLFACTOR = {"message": 80, "sms_segment": 70}


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite has no fillfactor
        for table, percent in FILLFACTOR.items():
            op.execute(f"ALTER TABLE {table} SET (fillfactor = {percent})")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        for table in FILLFACTOR:
            op.execute(f"ALTER TABLE {table} RESET (fillfactor)")
