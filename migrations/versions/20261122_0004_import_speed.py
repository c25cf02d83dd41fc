"""import speed: no foreign key from message to campaign; two message indexes become partial

Every imported message is `queued` with no gateway, yet each one paid for an entry in
`ix_message_gateway_status` (gateway, status) and `ix_message_status_next` (status,
next_attempt_at): about a tenth of the cost of moving a chunk of an upload into `message`.

- `ix_message_gateway_status` keeps its columns and now holds only rows with a gateway (set when
  a message is dispatched). The queries that look messages up by gateway name one
  (`gateway IN (…)`, `gateway = :g`), which implies `gateway IS NOT NULL`, so they still use it.
- `ix_message_status_next` is replaced by `ix_message_dispatching` (lease_until) on the rows being
  dispatched only. No query reads `next_attempt_at` through it (the claim finds a campaign's due
  rows through `ix_message_campaign_status_id`); what used its `status` prefix is the search for
  messages in flight: the in-flight count per gateway, the lease sweeper (`lease_until < :now`),
  the SMS journal recovery and the failover hand-over, all `status = 'dispatching'`. A partial
  index on `next_attempt_at IS NOT NULL` would have left those four scanning the whole table.
  Dispatching rows are few (the in-flight backlog), so the index stays small, and a message that
  becomes `sent` leaves it instead of adding an entry.

The foreign key message.campaign_id → campaign goes. Postgres checks it with one query per
inserted row (SPI, plan set up and a key-share lock on the campaign row each time): a fifth of
the Postgres CPU of a million-row upload, measured with perf, and the target (50,000 rows/s) is
not reached with it. Nothing is left orphaned without it, because the one place that deletes a
campaign, `campaigns.service.delete_campaign` (drafts only), deletes its messages, events and
uploads itself, and it holds the campaign row `FOR UPDATE` (the DELETE route locks it), as does an
upload (`api.routes.recipients._locked_campaign`, `campaigns.staging._lock_campaign`): an upload
and a deletion of one campaign take turns, and whichever comes second sees what the first
committed. The other writers of messages (clone, test send) insert into a campaign they created
in the same transaction. Like the reporting tables (migration 0002), `message` then refers to its
campaign by id without a constraint.

Building the indexes blocks writes to `message` for a while on a big table: upgrade between waves.

Revision ID: 0004_import_speed
Revises: 0003_claim_index
Create Date: 2026-11-22 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_import_speed"
down_revision: str | None = "0003_claim_index"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DISPATCHING = sa.text("status = 'dispatching'")
HAS_GATEWAY = sa.text("gateway IS NOT NULL")
FOREIGN_KEY = "fk_message_campaign_id_campaign"


def upgrade() -> None:
    # First, while the indexes are plain: SQLite drops a foreign key by copying the table.
    with op.batch_alter_table("message") as batch_op:
        batch_op.drop_constraint(FOREIGN_KEY, type_="foreignkey")
    op.drop_index("ix_message_gateway_status", table_name="message")
    op.create_index(
        "ix_message_gateway_status",
        "message",
        ["gateway", "status"],
        postgresql_where=HAS_GATEWAY,
        sqlite_where=HAS_GATEWAY,
    )
    op.create_index(
        "ix_message_dispatching",
        "message",
        ["lease_until"],
        postgresql_where=DISPATCHING,
        sqlite_where=DISPATCHING,
    )
    op.drop_index("ix_message_status_next", table_name="message")


def downgrade() -> None:
    op.create_index("ix_message_status_next", "message", ["status", "next_attempt_at"])
    op.drop_index("ix_message_dispatching", table_name="message")
    op.drop_index("ix_message_gateway_status", table_name="message")
    op.create_index("ix_message_gateway_status", "message", ["gateway", "status"])
    with op.batch_alter_table("message") as batch_op:
        batch_op.create_foreign_key(FOREIGN_KEY, "campaign", ["campaign_id"], ["id"])
