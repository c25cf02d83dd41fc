"""segment receipts: a segment keeps its final receipt instead of a timeline event

A message's final receipt was a `message_event` row per segment, written for every message of a
wave next to the segment row's status. The segment now keeps the receipt's time and raw
`stat`/`err` words, set by the update that already sets its status, and the timeline reads them
from there; receipts that are not final (ENROUTE, ACCEPTD) stay events. Nullable columns without
a default: on Postgres adding them does not rewrite the table. Receipts applied before this
migration keep their events.

Revision ID: 0006_segment_receipts
Revises: 0005_receipt_scale
Create Date: 2026-12-06 23:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0006_segment_receipts"
down_revision: str | None = "0005_receipt_scale"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sms_segment", schema=None) as batch_op:
        batch_op.add_column(sa.Column("receipt_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("receipt_stat", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))
        batch_op.add_column(sa.Column("receipt_err", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sms_segment", schema=None) as batch_op:
        batch_op.drop_column("receipt_err")
        batch_op.drop_column("receipt_stat")
        batch_op.drop_column("receipt_at")
