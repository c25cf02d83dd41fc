"""receipt scale: 64-bit ids for per-message tables, and the inbox's read order as an index

`message_event`, `sms_segment` and `receipt_inbox` were created with 32-bit serial ids. One national
wave is ~1.5 billion messages with two or three timeline events each and a receipt each: the
sequences would run out (2,147,483,647) during the first wave. Widening rewrites those tables:
upgrade between waves.

`ix_receipt_inbox_attempts_id` serves the applier's `ORDER BY attempts, id LIMIT n`, which sorted
the whole inbox every batch once parked receipts piled up.

`message` gets its own autovacuum thresholds (2 % dead rows, 1 % changed for ANALYZE instead of
20 % and 10 %): a wave rewrites a small share of a big table many times over, and the dispatcher's
claim needs statistics and dead index entries that keep up with it.

Revision ID: 0005_receipt_scale
Revises: 0004_import_speed
Create Date: 2026-12-06 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_receipt_scale"
down_revision: str | None = "0004_import_speed"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WIDENED = ("message_event", "sms_segment", "receipt_inbox")
INDEX = "ix_receipt_inbox_attempts_id"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":  # SQLite's INTEGER PRIMARY KEY is 64-bit already
        for table in WIDENED:
            op.alter_column(table, "id", type_=sa.BigInteger(), existing_nullable=False)
            op.execute(f"ALTER SEQUENCE {table}_id_seq AS bigint")
    op.create_index(INDEX, "receipt_inbox", ["attempts", "id"], unique=False)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "ALTER TABLE message SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.01)"
        )


def downgrade() -> None:
    op.drop_index(INDEX, table_name="receipt_inbox")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE message RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor)")
        for table in WIDENED:
            op.execute(f"ALTER SEQUENCE {table}_id_seq AS integer")
            op.alter_column(table, "id", type_=sa.Integer(), existing_nullable=False)
