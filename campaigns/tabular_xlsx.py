"""The first worksheet of an XLSX workbook as a stream of rows, for :func:`campaigns.tabular.open_table`.

The workbook is read straight from its zip parts with expat: the workbook, shared strings and
styles by :class:`campaigns.xlsx_book.Book`, then here the sheet's cells as they stream out of
the decompressor. openpyxl's read-only mode does the same job
thirty times slower (it builds an element per cell, and scans a whole sheet for its dimension when
the file has none); only its small date helpers are used here.

Cells become the text a user sees: the cached value of a formula, whole numbers without ``.0``,
dates in ISO 8601, ``TRUE``/``FALSE``, and the value of a vertically merged cell on every row it
covers. XML with a DOCTYPE is refused (an XLSX never has one; entity tricks need one).
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import tempfile
import xml.parsers.expat
import zipfile
from collections.abc import Iterator
from typing import IO, Any, Final

from openpyxl.utils.datetime import from_excel, from_ISO8601

from campaigns.tabular import Row, TableError, _header_and_rows, _make_row, _Numbered, clean_text
from campaigns.xlsx_book import Book, Refused, local_name

__all__ = ["XlsxTable"]

logger = logging.getLogger(__name__)

_BROKEN: Final = "The file is not a readable Excel workbook (.xlsx)."


_DIGITS: Final = "0123456789"
_column_cache: dict[str, int] = {}


def _column_of(ref: str) -> int:
    """0-based column of a cell reference: ``B7`` → 1."""
    letters = ref.rstrip(_DIGITS)
    try:
        return _column_cache[letters]
    except KeyError:
        index = 0
        for char in letters:
            index = index * 26 + ord(char) - 64
        _column_cache[letters] = index - 1
        return index - 1


class _Cells:
    """expat callbacks turning ``<row>``/``<c>`` elements into numbered rows of text."""

    def __init__(self, book: Book) -> None:
        self.book = book
        self.done: list[_Numbered] = []
        self.number = 0
        self._cells: list[str] = []
        self._column = -1
        self._type = "n"
        self._style = 0
        self._value: str | None = None
        self._inline: list[str] | None = None
        self._text: list[str] | None = None  # collecting the text of a <v> or inline <t>
        self._phonetic = False

    def start(self, name: str, attrs: dict[str, str]) -> None:
        local = local_name(name)
        if local == "c":
            ref = attrs.get("r")
            self._column = _column_of(ref) if ref else self._column + 1
            self._type = attrs.get("t", "n")
            style = attrs.get("s")
            self._style = int(style) if style else 0
            self._value = self._inline = None
        elif local == "v":
            self._text = []
        elif local == "row":
            ref = attrs.get("r")
            number = int(ref) if ref else self.number + 1
            if self.number == 0 and number > 1:
                self.done.append((1, []))  # an empty first row is the header's problem to report
            self.number, self._cells, self._column = number, [], -1
        elif local == "is":
            self._inline = []
        elif local == "t" and self._inline is not None and not self._phonetic:
            self._text = []
        elif local == "rPh":
            self._phonetic = True

    def end(self, name: str) -> None:
        local = local_name(name)
        if local == "c":
            text = self._cell()
            if text:
                cells = self._cells
                if len(cells) <= self._column:
                    cells.extend([""] * (self._column + 1 - len(cells)))
                cells[self._column] = text
        elif local == "v" and self._text is not None:
            self._value, self._text = "".join(self._text) or None, None  # <v/>: a formula never computed
        elif local == "t" and self._text is not None and self._inline is not None:
            self._inline.append("".join(self._text))
            self._text = None
        elif local == "row":
            self.done.append((self.number, self._cells))
        elif local == "rPh":
            self._phonetic = False

    def text(self, data: str) -> None:
        if self._text is not None:
            self._text.append(data)

    def _cell(self) -> str:
        kind, value = self._type, self._value
        if kind == "s":
            return self.book.strings[int(value)] if value else ""
        if kind == "inlineStr":
            return clean_text("".join(self._inline or ()))
        if value is None:
            return ""
        if kind == "n":
            number = float(value) if ("." in value or "e" in value or "E" in value) else int(value)
            if self._style in self.book.dates:
                try:
                    return _cell_text(from_excel(number, self.book.epoch, timedelta=self._style in self.book.durations))
                except (OverflowError, ValueError):
                    pass  # outside the calendar: the number itself, as Excel shows ####
            return _cell_text(number)
        if kind == "b":
            return "TRUE" if value in ("1", "true") else "FALSE"
        if kind == "d":
            return _cell_text(from_ISO8601(value))
        return clean_text(value)  # str (a formula's text), e (an error such as #N/A)


class XlsxTable:
    """First worksheet of an XLSX workbook, streamed."""

    def __init__(self, source: IO[bytes]) -> None:
        self._source = source
        self._archive: zipfile.ZipFile | None = None
        try:
            self._archive = zipfile.ZipFile(source)
            self._book = Book(self._archive)
            self._merges = _vertical_merges(self._archive, self._book.sheet)
            self.header, self._data = _header_and_rows(self._rows())
        except TableError:
            self.close()
            raise
        except Exception as exc:  # untrusted zip/XML: any parser error means a broken file
            logger.info("unreadable xlsx upload: %s", exc)
            self.close()
            raise TableError("bad_xlsx", _BROKEN) from None

    def _rows(self) -> Iterator[_Numbered]:
        assert self._archive is not None
        cells = _Cells(self._book)
        merges = self._merges
        filling: list[tuple[int, int, str]] = []  # (column, last row, value) of merges in progress
        try:
            with self._archive.open(self._book.sheet) as source:
                parser = xml.parsers.expat.ParserCreate()
                parser.buffer_text = True
                parser.StartElementHandler = cells.start
                parser.EndElementHandler = cells.end
                parser.CharacterDataHandler = cells.text
                parser.StartDoctypeDeclHandler = _refuse_doctype
                while True:
                    chunk = source.read(1 << 16)
                    parser.Parse(chunk, not chunk)
                    done, cells.done = cells.done, []
                    for number, row in done:
                        if merges:
                            filling = _fill_merged(number, row, merges, filling)
                        yield number, row
                    if not chunk:
                        break
        except TableError:
            raise
        except Exception as exc:
            logger.info("xlsx upload broken after row %s: %s", cells.number, exc)
            broken = cells.number + 1
            raise TableError("bad_xlsx", f"The workbook is damaged at row {broken}.", row=broken) from None

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
        if self._archive is not None:
            self._archive.close()  # leaves the caller's stream open
            self._archive = None
        if isinstance(self._source, tempfile.SpooledTemporaryFile):
            self._source.close()


def _refuse_doctype(*_: Any) -> None:
    raise Refused("DOCTYPE in a worksheet")


_MERGE_REF: Final = re.compile(rb'<(?:\w+:)?mergeCell\s[^>]*?ref="([A-Z]{1,3})(\d+):([A-Z]{1,3})(\d+)"')
_MERGE_TAIL_LIMIT: Final = 16 * 1024 * 1024


def _vertical_merges(archive: zipfile.ZipFile, sheet: str) -> dict[int, list[tuple[int, int]]]:
    """Merged ranges of data rows that span several rows, as {first row: [(column, last row)]}.

    A merged cell shows its value on every row it covers, but the file stores it only in the
    top-left cell; spreadsheets of households grouped by commune merge exactly that way. Merges
    are written after the cell data, so the sheet is decompressed once (no XML parsing) to find
    its ``<mergeCell>`` elements before the rows are read. Merges starting on the header row are
    left alone.
    """
    tail = b""
    rest: bytes | None = None
    with archive.open(sheet) as source:
        while chunk := source.read(1 << 20):
            if rest is None:
                data = tail + chunk
                position = data.find(b"</sheetData>")
                if position < 0:
                    tail = data[-16:]
                    continue
                rest = data[position:]
            else:
                rest += chunk
            if len(rest) > _MERGE_TAIL_LIMIT:
                break
    merges: dict[int, list[tuple[int, int]]] = {}
    for first_col, first_row, _last_col, last_row in _MERGE_REF.findall(rest or b""):
        top, bottom = int(first_row), int(last_row)
        if 1 < top < bottom:
            merges.setdefault(top, []).append((_column_of(first_col.decode()), bottom))
    return merges


def _fill_merged(
    number: int, cells: list[str], merges: dict[int, list[tuple[int, int]]], filling: list[tuple[int, int, str]]
) -> list[tuple[int, int, str]]:
    """Give the cells of row ``number`` covered by a vertical merge the value of its top cell
    (in the merge's first column only: a value is not copied into other columns)."""
    for column, _last, value in filling:
        if len(cells) <= column:
            cells.extend([""] * (column + 1 - len(cells)))
        cells[column] = value
    filling = [entry for entry in filling if entry[1] > number]
    for column, last in merges.get(number, ()):
        filling.append((column, last, cells[column] if column < len(cells) else ""))
    return filling


def _cell_text(value: object) -> str:
    """A cell value as the text a user expects: 912345678 not 912345678.0, dates in ISO 8601."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e16:
            return str(int(value))
        return repr(value)
    if isinstance(value, dt.datetime):
        if value.time() == dt.time(0) and value.tzinfo is None:
            return value.date().isoformat()
        return value.isoformat()
    if isinstance(value, dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return str(value)
    return clean_text(str(value))
