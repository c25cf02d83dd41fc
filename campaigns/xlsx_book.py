"""The parts of an XLSX workbook around its sheets, read with expat: which sheet comes first,
the shared string table and which cell styles show numbers as dates (see
:mod:`campaigns.tabular_xlsx`, which reads the sheet itself).

Paths are found through the package relationships, as the format defines them, rather than
assumed (``xl/workbook.xml``, ``sheet1.xml``): other tools name them differently. XML with a
DOCTYPE is refused: an XLSX part never has one, and entity expansion tricks need one.
"""

from __future__ import annotations

import datetime as dt
import posixpath
import xml.parsers.expat
import zipfile
from collections.abc import Callable
from typing import Any, Final, Protocol

from openpyxl.styles.numbers import BUILTIN_FORMATS, is_date_format, is_timedelta_format
from openpyxl.utils.datetime import CALENDAR_MAC_1904, CALENDAR_WINDOWS_1900

from campaigns.tabular import TableError, clean_text

__all__ = ["Book", "Refused", "local_name", "parse_part"]

_SHARED_STRINGS_LIMIT: Final = 256 * 1024 * 1024  # decompressed bytes: a zip bomb stops here


class Refused(Exception):
    """XML that an XLSX part never contains."""


class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def local_name(name: str) -> str:
    return name.rpartition(":")[2]


def parse_part(
    source: _Readable,
    start: Callable[[str, dict[str, str]], None],
    end: Callable[[str], None] | None = None,
    text: Callable[[str], None] | None = None,
    rounds: Callable[[], None] | None = None,
) -> None:
    """Feed an XML part to expat in 64 KiB pieces (``rounds`` is called after each)."""
    parser = xml.parsers.expat.ParserCreate()
    parser.buffer_text = True

    def doctype(*_: Any) -> None:
        raise Refused("DOCTYPE in a workbook part")

    parser.StartDoctypeDeclHandler = doctype
    parser.StartElementHandler = start
    if end is not None:
        parser.EndElementHandler = end
    if text is not None:
        parser.CharacterDataHandler = text
    while chunk := source.read(1 << 16):
        parser.Parse(chunk, False)
        if rounds is not None:
            rounds()
    parser.Parse(b"", True)
    if rounds is not None:
        rounds()


class Book:
    """Where the first sheet is and how to read its cells."""

    def __init__(self, archive: zipfile.ZipFile) -> None:
        self.archive = archive
        book_path = self._targets("", "_rels/.rels").get("officeDocument", "xl/workbook.xml")
        folder, name = posixpath.split(book_path)
        parts = self._targets(folder, f"{folder}/_rels/{name}.rels", by_id=True)
        first, self.epoch = self._first_sheet(book_path)
        if first is None or first not in parts:
            raise TableError("empty_file", "The workbook has no worksheet.")
        self.sheet = parts[first]
        kinds = self._targets(folder, f"{folder}/_rels/{name}.rels")
        self.strings = self._strings(kinds["sharedStrings"]) if "sharedStrings" in kinds else []
        self.dates, self.durations = self._date_styles(kinds["styles"]) if "styles" in kinds else (set(), set())

    def _targets(self, folder: str, rels: str, by_id: bool = False) -> dict[str, str]:
        """Relationship targets of a part, as archive paths, by type (last word) or by id."""
        found: dict[str, str] = {}
        if rels not in self.archive.namelist():
            return found

        def start(name: str, attrs: dict[str, str]) -> None:
            if local_name(name) == "Relationship" and attrs.get("TargetMode") != "External":
                target = attrs.get("Target", "")
                path = target[1:] if target.startswith("/") else posixpath.normpath(posixpath.join(folder, target))
                key = attrs.get("Id", "") if by_id else attrs.get("Type", "").rpartition("/")[2]
                found.setdefault(key, path)

        with self.archive.open(rels) as source:
            parse_part(source, start)
        return found

    def _first_sheet(self, book_path: str) -> tuple[str | None, dt.datetime]:
        first: list[str] = []
        epoch = [CALENDAR_WINDOWS_1900]

        def start(name: str, attrs: dict[str, str]) -> None:
            local = local_name(name)
            if local == "sheet" and not first:
                rid = next((v for k, v in attrs.items() if k == "r:id" or k.endswith(":id")), None)
                if rid is not None:
                    first.append(rid)
            elif local == "workbookPr" and attrs.get("date1904") in ("1", "true"):
                epoch[0] = CALENDAR_MAC_1904

        with self.archive.open(book_path) as source:
            parse_part(source, start)
        return (first[0] if first else None), epoch[0]

    def _strings(self, path: str) -> list[str]:
        """The shared string table: the text of each ``<si>``, without phonetic runs."""
        strings: list[str] = []
        pieces: list[str] = []
        state = {"t": False, "phonetic": False}

        def start(name: str, _attrs: dict[str, str]) -> None:
            local = local_name(name)
            if local == "t" and not state["phonetic"]:
                state["t"] = True
            elif local == "rPh":
                state["phonetic"] = True

        def end(name: str) -> None:
            local = local_name(name)
            if local == "t":
                state["t"] = False
            elif local == "rPh":
                state["phonetic"] = False
            elif local == "si":
                strings.append(clean_text("".join(pieces)))
                pieces.clear()

        def text(data: str) -> None:
            if state["t"]:
                pieces.append(data)

        with self.archive.open(path) as source:
            parse_part(_Limited(source, _SHARED_STRINGS_LIMIT), start, end, text)
        return strings

    def _date_styles(self, path: str) -> tuple[set[int], set[int]]:
        """Indexes of the cell formats that show numbers as dates (and as durations)."""
        formats: dict[int, str] = dict(BUILTIN_FORMATS)
        styles: list[int] = []
        where: list[str] = []

        def start(name: str, attrs: dict[str, str]) -> None:
            local = local_name(name)
            if local == "numFmt" and "numFmtId" in attrs:
                formats[int(attrs["numFmtId"])] = attrs.get("formatCode", "")
            elif local == "cellXfs":
                where.append(local)
            elif local == "xf" and where:
                styles.append(int(attrs.get("numFmtId", "0")))

        def end(name: str) -> None:
            if local_name(name) == "cellXfs":
                where.clear()

        with self.archive.open(path) as source:
            parse_part(source, start, end)
        codes = [formats.get(number, "") for number in styles]
        dates = {i for i, code in enumerate(codes) if code and is_date_format(code)}
        return dates, {i for i in dates if is_timedelta_format(codes[i])}


class _Limited:
    """A stream that refuses to give more than ``limit`` bytes."""

    def __init__(self, source: _Readable, limit: int) -> None:
        self.source, self.left = source, limit

    def read(self, size: int = -1) -> bytes:
        data = self.source.read(size)
        self.left -= len(data)
        if self.left < 0:
            raise TableError("bad_xlsx", "The workbook's text is too large to read.")
        return data
