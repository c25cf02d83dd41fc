"""Recipient files (CSV or XLSX) read as a stream of rows, never held whole in memory.

:func:`open_table` looks at the first 64 KiB to decide what the upload is (magic bytes first, then
the file name, then the declared content type), reads the header row and returns a
:class:`TableReader` whose iterator yields :class:`Row` objects numbered as a spreadsheet shows
them (header = 1), so error lists point at the row the user sees. Problems with the file as a
whole raise :class:`TableError` with a stable ``code`` and a message the uploader can act on.

Values arrive as text: surrounding whitespace stripped and Unicode in NFC (Vietnamese typed with
combining marks would otherwise compare unequal and cost twice the SMS segments). CSV must be
UTF-8; a file in a legacy Vietnamese encoding gets an error naming it
(:mod:`campaigns.legacy_encodings`) instead of turning into mojibake in a million messages.
"""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import shutil
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator
from typing import IO, Any, BinaryIO, Final, NamedTuple, Protocol

from campaigns.legacy_encodings import guess_legacy_encoding

__all__ = ["Row", "TableError", "TableReader", "clean_text", "open_table"]

logger = logging.getLogger(__name__)

SNIFF_BYTES: Final = 64 * 1024
# XLSX that arrives on a non-seekable stream is spooled to disk past this size (openpyxl needs
# to seek inside the zip); small uploads stay in memory.
SPOOL_MEMORY: Final = 1024 * 1024

_ZIP_MAGIC: Final = b"PK\x03\x04"
_OLE2_MAGIC: Final = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # legacy .xls (and .doc)
_UTF16_BOMS: Final = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)

_CSV_EXTENSIONS: Final = frozenset({".csv", ".txt", ".tsv"})
_XLSX_EXTENSIONS: Final = frozenset({".xlsx", ".xlsm"})
_CSV_TYPES: Final = frozenset({"text/csv", "text/plain", "application/csv", "text/tab-separated-values", "text/x-csv"})
_XLSX_TYPES: Final = frozenset(
    {
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
        "application/vnd.ms-excel.sheet.macroenabled.12",
    }
)
# Note: application/vnd.ms-excel is not here on purpose: Windows browsers send it for .csv
# files when Excel is installed, so it says nothing about the content.

_Numbered = tuple[int, list[str]]  # (spreadsheet row number, cells)

_SAVE_AS: Final = "Save it as 'CSV UTF-8 (Comma delimited)' or as an Excel workbook (.xlsx) and upload again."


class TableError(ValueError):
    """The file as a whole cannot be read. ``code`` is one of ``empty_file``, ``no_header``,
    ``empty_header``, ``duplicate_header``, ``legacy_encoding``, ``not_utf8``, ``binary_file``,
    ``bad_csv``, ``bad_xlsx``, ``unsupported_format``; ``row`` is set when the problem was found
    on a particular row (spreadsheet numbering)."""

    def __init__(self, code: str, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.row = row


class Row(NamedTuple):
    """One data row. ``values`` has exactly one entry per header column ("" for missing cells);
    ``extra`` says the row had non-empty cells to the right of the last named column.
    (A named tuple: a million of them are made per upload, at a third of a dataclass's cost.)"""

    number: int
    values: list[str]
    extra: bool = False


class TableReader(Protocol):
    """Header plus a single-pass iterator over the data rows; fully empty rows are skipped (their
    numbers are not reused). Iterating to the end, or ``close()``, releases the file."""

    header: list[str]

    def __iter__(self) -> Iterator[Row]: ...

    def close(self) -> None: ...


def open_table(stream: BinaryIO, filename: str | None, content_type: str | None = None) -> TableReader:
    """Open an uploaded CSV or XLSX file; the caller keeps ownership of ``stream``."""
    start = stream.tell() if stream.seekable() else None
    head = _read_up_to(stream, SNIFF_BYTES)
    if not head:
        raise TableError("empty_file", "The file is empty.")
    claimed = _claimed_format(filename, content_type)
    if head.startswith(_ZIP_MAGIC) and claimed != "other":
        # A workbook renamed to .csv or .xls is still a workbook; trust the bytes over the name.
        from campaigns.tabular_xlsx import XlsxTable  # only workbook uploads pay for openpyxl

        return XlsxTable(_seekable_copy(stream, head, start))
    if head.startswith(_OLE2_MAGIC) or claimed == "xls":
        raise TableError(
            "unsupported_format",
            "Old Excel 97-2003 (.xls) files are not supported. "
            "Open the file in Excel and save it as an Excel workbook (.xlsx) or as 'CSV UTF-8'.",
        )
    if claimed == "xlsx":
        raise TableError("bad_xlsx", "The file is named like an Excel workbook but is not one (.xlsx).")
    if claimed == "other":
        raise TableError("unsupported_format", "Upload a CSV file or an Excel workbook (.xlsx).")
    return _CsvTable(stream, head)


def _claimed_format(filename: str | None, content_type: str | None) -> str | None:
    """What the name (or, without an extension, the content type) says: csv, xlsx, xls, other."""
    extension = os.path.splitext(filename or "")[1].lower()
    if extension:
        if extension in _CSV_EXTENSIONS:
            return "csv"
        if extension in _XLSX_EXTENSIONS:
            return "xlsx"
        if extension == ".xls":
            return "xls"
        return "other"
    media_type = (content_type or "").split(";")[0].strip().lower()
    if media_type in _CSV_TYPES:
        return "csv"
    if media_type in _XLSX_TYPES:
        return "xlsx"
    return None


def _read_up_to(stream: IO[bytes], size: int) -> bytes:
    # read() on a pipe or socket may return less than asked before the end.
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = stream.read(remaining)
        if not chunk:
            break
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _seekable_copy(stream: BinaryIO, head: bytes, start: int | None) -> IO[bytes]:
    if start is not None:
        stream.seek(start)
        return stream
    spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)  # noqa: SIM115 - the reader closes it
    spool.write(head)
    shutil.copyfileobj(stream, spool)
    spool.seek(0)
    return spool


class _HeadThenRest(io.RawIOBase):
    """The bytes already read for sniffing, then the rest of the stream, as one raw stream."""

    def __init__(self, head: bytes, rest: IO[bytes]) -> None:
        self._head = memoryview(head)
        self._rest = rest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        if self._head:
            size = min(len(target), len(self._head))
            target[:size] = self._head[:size]
            self._head = self._head[size:]
            return size
        data = self._rest.read(len(target))
        target[: len(data)] = data
        return len(data)


def _column_letter(index: int) -> str:
    """Spreadsheet column name of a 0-based index: 0 → A, 26 → AA."""
    letters = ""
    index += 1
    while index:
        index, remainder = divmod(index - 1, 26)
        letters = chr(65 + remainder) + letters
    return letters


def clean_text(value: str) -> str:
    """A cell as stored: surrounding whitespace stripped, Unicode in NFC."""
    value = value.strip()
    if not value.isascii() and not unicodedata.is_normalized("NFC", value):
        value = unicodedata.normalize("NFC", value)
    return value


_clean = clean_text


def _header_from(cells: list[str]) -> list[str]:
    names = [_clean(cell.lstrip("\ufeff")) for cell in cells]
    while names and not names[-1]:
        names.pop()
    seen: dict[str, int] = {}
    for position, name in enumerate(names):
        column = _column_letter(position)
        if not name:
            raise TableError(
                "empty_header",
                f"Column {column} has no name in the header (row 1). "
                "Name every column, or delete the columns you do not need.",
                row=1,
            )
        key = name.casefold()
        if key in seen:
            first = _column_letter(seen[key])
            raise TableError(
                "duplicate_header",
                f"The column name '{name}' appears twice in the header (columns {first} and {column}).",
                row=1,
            )
        seen[key] = position
    return names


def _make_row(number: int, cells: list[str], width: int) -> Row | None:
    """A Row from cleaned cells, or None for a row with nothing in it."""
    end = len(cells)
    while end and not cells[end - 1]:
        end -= 1
    if not end:
        return None
    if end > width:
        return Row(number, cells[:width], extra=True)
    return Row(number, cells[:end] + [""] * (width - end))


def _header_and_rows(rows: Iterable[_Numbered]) -> tuple[list[str], Iterator[_Numbered]]:
    """Split the first row off as the header, with the empty-file and empty-first-row checks."""
    iterator = iter(rows)
    for _first, cells in iterator:
        header = _header_from(cells)
        if header:
            return header, iterator
        for later, rest in iterator:
            if any(cell.strip() for cell in rest):
                raise TableError(
                    "no_header",
                    f"Row 1 is empty but row {later} is not. The first row must hold the column names.",
                    row=1,
                )
        break
    raise TableError("empty_file", "The file has no rows.")


class _CsvTable:
    """UTF-8 CSV, comma/semicolon/tab separated, decoded incrementally from the stream."""

    def __init__(self, stream: BinaryIO, head: bytes) -> None:
        text_head = _check_text(head, complete=len(head) < SNIFF_BYTES)
        self._text = io.TextIOWrapper(
            io.BufferedReader(_HeadThenRest(head, stream)),
            encoding="utf-8-sig",
            # Undecodable bytes become lone surrogates, found per row in _rows(): an exact row
            # number, where strict decoding would fail a whole 8 KiB chunk early.
            errors="surrogateescape",
            newline="",
        )
        delimiter = _sniff_delimiter(text_head.lstrip("\ufeff"))
        if delimiter is None:
            # Excel's "sep=;" first line: Excel hides it, so it does not count as a row.
            delimiter = self._text.readline().strip().lstrip("\ufeff")[4:]
        # strict: a quote never closed would otherwise swallow the rest of the file into one cell,
        # and "ab"c would silently become abc.
        self._reader = csv.reader(self._text, delimiter=delimiter, strict=True)
        self._closed = False
        self._number = 0
        self.header, self._data = _header_and_rows(self._rows())

    def _rows(self) -> Iterator[_Numbered]:
        try:
            for cells in self._reader:
                self._number += 1
                # One check for the whole row instead of a function call per cell; NUL never
                # composes, so the joined row is NFC exactly when every cell is.
                joined = "\x00".join(cells)
                if not joined.isascii():
                    try:
                        joined.encode("utf-8")
                    except UnicodeEncodeError:
                        raise self._undecodable(cells) from None
                    if not unicodedata.is_normalized("NFC", joined):
                        yield self._number, [_clean(cell) for cell in cells]
                        continue
                yield self._number, [cell.strip() for cell in cells]
        except csv.Error as exc:
            row = self._number + 1
            raise TableError(
                "bad_csv",
                f'Row {row} cannot be read as CSV ({exc}). Look for a quote (") that is never closed or is '
                'followed by more text in the same cell; a quote inside a cell is written twice ("").',
                row=row,
            ) from None

    def _undecodable(self, cells: list[str]) -> TableError:
        row = self._number
        return _not_utf8("\t".join(cells).encode("utf-8", "surrogateescape"), f"Row {row}", row)

    def __iter__(self) -> Iterator[Row]:
        width = len(self.header)
        try:
            for number, cells in self._data:
                row = _make_row(number, cells, width)
                if row is not None:
                    yield row
        finally:
            self.close()

    def close(self) -> None:
        # Detach rather than close: the upload stream belongs to the caller.
        if not self._closed:
            self._closed = True
            self._text.detach()


def _check_text(head: bytes, complete: bool) -> str:
    """The sniffed bytes as text, or the TableError that says why they are not UTF-8 CSV."""
    if head.startswith(_UTF16_BOMS):
        raise TableError("not_utf8", f"The file is UTF-16 text (Excel's 'Unicode Text'). {_SAVE_AS}")
    controls = sum(head.count(bytes((c,))) for c in range(32) if c not in (9, 10, 12, 13))
    if b"\x00" in head or controls * 10 > len(head):
        raise TableError("binary_file", "The file is not a CSV text file or an Excel workbook.")
    try:
        # Incremental, so a character cut in two at the 64 KiB mark is not an error.
        return codecs.getincrementaldecoder("utf-8")().decode(head, final=complete)
    except UnicodeDecodeError:
        pass
    raise _not_utf8(head, "The file")


def _not_utf8(data: bytes, where: str, row: int | None = None) -> TableError:
    """The error for undecodable ``data``, naming its encoding when it can be told."""
    guess = guess_legacy_encoding(data)
    if guess is None:
        return TableError("not_utf8", f"{where} is not UTF-8 text. {_SAVE_AS}", row=row)
    return TableError("legacy_encoding", f"{where} is not UTF-8; it looks like {guess.name}. {guess.advice}", row=row)


def _sniff_delimiter(text: str) -> str | None:
    """The separator of the header line, or None when the first line is Excel's ``sep=`` hint.

    The most frequent of , ; TAB outside quotes wins, ties going to the comma (also the answer for
    a one-column file). Excel never writes a space after a separator, so separators followed by a
    space count only as a tie-breaker: Vietnamese-locale Excel writes ``Họ, tên;phone`` unquoted.
    """
    if text[:4].lower() == "sep=" and text[5:6] in ("\r", "\n", ""):
        return None
    tight = {",": 0, ";": 0, "\t": 0}
    spaced = dict(tight)
    quoted = False
    for index, char in enumerate(text):
        if char == '"':
            quoted = not quoted
        elif quoted:
            continue
        elif char in tight:
            if text[index + 1 : index + 2] == " ":
                spaced[char] += 1
            else:
                tight[char] += 1
        elif char in "\r\n":
            break
    return max(tight, key=lambda d: (tight[d], spaced[d]))  # max() keeps the first of equals: ","
