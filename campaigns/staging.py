"""Bulk writes of validated recipients into ``message``, one chunk at a time.

An upload gets a temporary staging table (gone at commit or rollback). Each chunk of validated
rows is loaded into it — ``COPY`` on Postgres, ``executemany`` on SQLite — and moved into
``message`` by a single ``INSERT … SELECT`` that

- skips addresses the campaign already holds, so a second upload appends and a repeated address
  is a duplicate; the first occurrence in a file is the one kept (:func:`_move_sql`);
- gives addresses on the organisation's suppression list the status ``suppressed`` and stores no
  secrets for them (a final message keeps none);
- reports how many rows it inserted; the rest of the chunk were duplicates. How many of the
  inserted rows are suppressed is counted once, at the end (:meth:`StagingWriter.suppressed`):
  asking the database for the status of every inserted row costs a fifth of the insert.

Doing the duplicate and suppression checks in the database keeps the API process flat in memory
whatever the size of the campaign or of the suppression list: nothing per recipient is remembered
between chunks. :func:`run_pipelined` lets the next chunk be parsed while the database takes the
previous one.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeVar

from sqlalchemy import TextClause, bindparam, func, select, text
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col

from campaigns.models import Campaign, Message, MessageStatus
from loa.db import table_of

__all__ = ["StagedRow", "StagingWriter", "open_writer", "run_pipelined"]

# (spreadsheet row, E.164 number or email, carrier, fields as JSON text, AES-GCM token or None)
StagedRow = tuple[int, str, str | None, str, str | None]

_STAGE = "loa_import_stage"
_COLUMNS = '"row", "to", carrier, fields, secrets'
_QUEUED = MessageStatus.QUEUED.value
_SUPPRESSED = MessageStatus.SUPPRESSED.value
_NULL = "\\N"  # NULL in COPY text format
_UNIQUE = "uq_message_campaign_to"
_SAVEPOINTS = 60  # chunks moved without looking (below the 64 subtransactions Postgres caches)
T = TypeVar("T")


class StagingWriter(Protocol):
    def write(self, rows: Sequence[StagedRow]) -> int:
        """Store a chunk; returns how many rows were inserted (the others were duplicates)."""
        ...

    def suppressed(self) -> int:
        """How many rows of this upload were inserted as suppressed."""
        ...

    def close(self) -> None: ...


def _move_sql(dialect: str, *, look: bool = True) -> str:
    """The INSERT … SELECT from the staging table; the two dialects differ in how duplicates go.

    Postgres: ``DISTINCT ON`` keeps the first row of each address in the chunk and, with ``look``,
    ``NOT EXISTS`` drops addresses the campaign already holds (earlier chunks and uploads). That is
    cheaper than letting ``ON CONFLICT`` find them, and exact because uploads to a campaign take
    turns (:func:`_lock_campaign`). Without ``look`` an address the campaign holds trips the unique
    constraint instead (see :class:`_PostgresWriter`). ``OFFSET 0`` keeps ``NOT EXISTS`` a probe
    per row: as a join, the planner (whose statistics still count the campaign from before the
    upload) hashes every message of the campaign for every chunk, and a million-row upload takes
    minutes. The probe goes through the index on the address alone (`campaign_id || ''` cannot use
    an index): statistics taken while another campaign filled the table make a new campaign look
    nearly empty, the planner then probed the (campaign_id, status, id) index on campaign_id alone,
    and every probe read every row the upload had already inserted (a 100k-row upload ran for
    minutes). An address is in few campaigns, whatever the statistics say.
    SQLite: ``ON CONFLICT DO NOTHING`` skips later occurrences, also within one statement.

    Rows go in ordered by address, then row number: the first occurrence of an address in the
    file is the one inserted, and both indexes that lead with the address are filled in key
    order, which makes Postgres's index maintenance a third cheaper than inserting in file order.
    """
    postgres = dialect == "postgresql"
    columns = f"""s."row", s."to", s.carrier,
               CASE WHEN x.address IS NULL THEN '{_QUEUED}' ELSE '{_SUPPRESSED}' END,
               {"CAST(s.fields AS JSON)" if postgres else "s.fields"},
               CASE WHEN x.address IS NULL THEN s.secrets END,
               1, 0, 0, {"false" if postgres else "0"}, :now, :now"""
    insert = """INSERT INTO message (campaign_id, upload_id, "row", "to", carrier, status, fields, secrets,
                             segments, attempts, ambiguous_resends, no_receipt, created_at, updated_at)"""
    suppression = f'FROM {_STAGE} AS s LEFT JOIN suppression AS x ON x.org_id = :org_id AND x.address = s."to"'
    if postgres:
        held = """WHERE NOT EXISTS (
            SELECT FROM message AS m WHERE m."to" = s."to" AND m.campaign_id || '' = CAST(:campaign_id AS varchar)
            OFFSET 0
        )"""
        return f"""{insert}
        SELECT DISTINCT ON (s."to") CAST(:campaign_id AS varchar), :upload_id, {columns}
        {suppression}
        {held if look else ""}
        ORDER BY s."to", s."row"
        """
    # SQLite needs a WHERE clause before ON CONFLICT when the SELECT has a join (parser ambiguity).
    return f"""{insert}
        SELECT :campaign_id, :upload_id, {columns}
        {suppression}
        WHERE true
        ORDER BY s."to", s."row"
        ON CONFLICT (campaign_id, "to") DO NOTHING
    """


def _lock_campaign(session: Session, campaign_id: str) -> None:
    """Uploads to one campaign take turns until commit (the API's upload already holds this lock):
    a concurrent upload's rows would be invisible to ``NOT EXISTS`` and trip the unique constraint."""
    session.execute(select(col(Campaign.id)).where(col(Campaign.id) == campaign_id).with_for_update())


class _Writer:
    """The part both dialects share: the move statement and the counting of what it returned."""

    def __init__(self, session: Session, campaign_id: str, upload_id: str, org_id: str, now: datetime) -> None:
        self.session = session
        self.dialect = session.get_bind().dialect.name
        self._params: dict[str, Any] = {
            "campaign_id": campaign_id,
            "upload_id": upload_id,
            "org_id": org_id,
            "now": now,
        }

    def _statement(self, *, look: bool = True) -> TextClause:
        created_type = table_of(Message).c.created_at.type
        return text(_move_sql(self.dialect, look=look)).bindparams(bindparam("now", type_=created_type))

    def _move_chunk(self, move: TextClause) -> int:
        result = self.session.execute(move, self._params)
        return int(result.rowcount)  # type: ignore[attr-defined]

    def suppressed(self) -> int:
        # Few rows, found through the (campaign_id, status) index.
        return int(
            self.session.scalar(
                select(func.count()).where(
                    col(Message.campaign_id) == self._params["campaign_id"],
                    col(Message.status) == _SUPPRESSED,
                    col(Message.upload_id) == self._params["upload_id"],
                )
            )
            or 0
        )


class _PostgresWriter(_Writer):
    """COPY into a temporary table (ON COMMIT DROP): the fastest way rows get into Postgres.

    Looking up every address in the campaign costs a fifth of the move. Into a campaign that held
    no messages when the upload began, a chunk therefore goes in without looking, inside a
    savepoint: the unique constraint finds the rare address an earlier chunk already brought, the
    chunk is taken back to the savepoint and moved again with the look-up, as is every later
    chunk. Postgres keeps 64 subtransactions of a transaction in shared memory and more slow every
    other session's snapshots, so the savepoints stop after :data:`_SAVEPOINTS`.
    """

    def __init__(self, session: Session, campaign_id: str, upload_id: str, org_id: str, now: datetime) -> None:
        super().__init__(session, campaign_id, upload_id, org_id, now)
        _lock_campaign(session, campaign_id)
        # The move sorts a chunk (a few MB with wide rows): in memory, not in temporary files.
        session.execute(text("SET LOCAL work_mem = '32MB'"))
        session.execute(
            text(
                f'CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ("row" integer, "to" text, carrier text, '
                "fields text, secrets text) ON COMMIT DROP"
            )
        )
        self._look = self._statement(look=True)
        self._blind = self._statement(look=False)
        held = session.scalar(select(col(Message.id)).where(col(Message.campaign_id) == campaign_id).limit(1))
        self._savepoints = 0 if held is None else _SAVEPOINTS

    def write(self, rows: Sequence[StagedRow]) -> int:
        if not rows:
            return 0
        connection = self.session.connection()
        connection.exec_driver_sql(f"TRUNCATE {_STAGE}")
        driver: Any = connection.connection.dbapi_connection
        with driver.cursor() as cursor, cursor.copy(f"COPY {_STAGE} ({_COLUMNS}) FROM STDIN") as copy:
            copy.write("".join(map(_copy_line, rows)))
        if self._savepoints >= _SAVEPOINTS:
            return self._move_chunk(self._look)
        self._savepoints += 1
        connection.exec_driver_sql("SAVEPOINT loa_import_chunk")
        try:
            inserted = self._move_chunk(self._blind)
        except IntegrityError as exc:
            if getattr(getattr(exc.orig, "diag", None), "constraint_name", None) != _UNIQUE:
                raise
            connection.exec_driver_sql("ROLLBACK TO SAVEPOINT loa_import_chunk")
            self._savepoints = _SAVEPOINTS
            return self._move_chunk(self._look)
        connection.exec_driver_sql("RELEASE SAVEPOINT loa_import_chunk")
        return inserted

    def close(self) -> None:
        """Nothing to do: the table goes with the transaction."""


def _copy_line(row: StagedRow) -> str:
    """One line of COPY text format. Numbers, carriers and tokens never hold a backslash, tab or
    newline; the JSON text holds no raw control characters (json escapes them), so doubling
    backslashes is the only escaping needed."""
    number, to, carrier, fields, secrets = row
    if "\\" in fields:
        fields = fields.replace("\\", "\\\\")
    if "\\" in to or "\t" in to:
        to = to.replace("\\", "\\\\").replace("\t", "\\t")
    return f"{number}\t{to}\t{carrier or _NULL}\t{fields}\t{secrets or _NULL}\n"


class _SqliteWriter(_Writer):
    """executemany into a temporary table; SQLite runs in-process, so this is as fast as it gets."""

    def __init__(self, session: Session, campaign_id: str, upload_id: str, org_id: str, now: datetime) -> None:
        super().__init__(session, campaign_id, upload_id, org_id, now)
        self._move = self._statement()
        session.execute(
            text(
                f'CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} ("row" integer, "to" text, carrier text, '
                "fields text, secrets text)"
            )
        )
        session.execute(text(f"DELETE FROM {_STAGE}"))

    def write(self, rows: Sequence[StagedRow]) -> int:
        if not rows:
            return 0
        connection = self.session.connection()
        connection.exec_driver_sql(f"DELETE FROM {_STAGE}")
        connection.exec_driver_sql(f"INSERT INTO {_STAGE} ({_COLUMNS}) VALUES (?, ?, ?, ?, ?)", list(rows))
        return self._move_chunk(self._move)

    def close(self) -> None:
        # A temporary table on SQLite lives as long as the (pooled) connection: empty it.
        self.session.connection().exec_driver_sql(f"DELETE FROM {_STAGE}")


def open_writer(session: Session, campaign_id: str, upload_id: str, org_id: str, now: datetime) -> StagingWriter:
    """The staging writer for the session's database, inside the session's transaction."""
    if session.get_bind().dialect.name == "postgresql":
        return _PostgresWriter(session, campaign_id, upload_id, org_id, now)
    return _SqliteWriter(session, campaign_id, upload_id, org_id, now)


def run_pipelined(chunks: Iterator[T], consume: Callable[[T], None], depth: int = 2) -> None:
    """Consume ``chunks`` on this thread while a helper thread produces the next ones.

    At most ``depth`` chunks wait in between, so memory stays bounded. An exception on either side
    stops both and is raised here; the producer is always finished (and ``chunks`` closed) on return.
    """
    handoff: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for chunk in chunks:
                if not put(("chunk", chunk)):
                    return
            put(("done", None))
        except BaseException as exc:  # handed to the consumer, which raises it
            put(("error", exc))

    worker = threading.Thread(target=produce, name="loa-import-reader", daemon=True)
    worker.start()
    try:
        while True:
            kind, item = handoff.get()
            if kind == "error":
                raise item
            if kind == "done":
                break
            consume(item)
    finally:
        stop.set()
        worker.join()
        close = getattr(chunks, "close", None)
        if close is not None:
            close()
