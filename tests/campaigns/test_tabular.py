"""Reading recipient files: real CSV and XLSX files written to disk, legacy encodings built from
real bytes, streams that cannot seek, and proof that nothing reads a file whole."""

from __future__ import annotations

import csv
import datetime as dt
import io
import os
import threading
import unicodedata
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openpyxl
import pytest

from campaigns.legacy_encodings import guess_legacy_encoding
from campaigns.tabular import Row, TableError, TableReader, open_table

# ---------------------------------------------------------------- helpers


def write_csv(path: Path, rows: list[list[str]], delimiter: str = ",", encoding: str = "utf-8") -> Path:
    with path.open("w", newline="", encoding=encoding) as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


def read(path: Path, filename: str | None = None, content_type: str | None = None) -> tuple[list[str], list[Row]]:
    with path.open("rb") as handle:
        table = open_table(handle, filename if filename is not None else path.name, content_type)
        return table.header, list(table)


def read_bytes(data: bytes, filename: str | None = "upload.csv") -> tuple[list[str], list[Row]]:
    table = open_table(io.BytesIO(data), filename)
    return table.header, list(table)


def table_error(data: bytes, filename: str | None = "upload.csv") -> TableError:
    with pytest.raises(TableError) as caught:
        read_bytes(data, filename)
    return caught.value


class CountingStream(io.RawIOBase):
    """A non-seekable byte source generated on demand, counting what has been read from it."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._pending = b""
        self.served = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        while not self._pending:
            self._pending = next(self._chunks, b"")
            if not self._pending:
                return 0
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        self._pending = self._pending[size:]
        self.served += size
        return size


def through_pipe(data: bytes) -> io.BufferedReader:
    """``data`` on the read end of a real OS pipe (not seekable), fed by a writer thread."""
    read_fd, write_fd = os.pipe()

    def feed() -> None:
        with os.fdopen(write_fd, "wb") as writer:
            writer.write(data)

    threading.Thread(target=feed, daemon=True).start()
    return os.fdopen(read_fd, "rb")


# ---------------------------------------------------------------- CSV


@pytest.mark.parametrize("delimiter", [",", ";", "\t"])
def test_csv_delimiters_as_excel_writes_them(tmp_path: Path, delimiter: str) -> None:
    path = write_csv(
        tmp_path / "list.csv",
        [["phone", "name", "note"], ["0912345678", "An", "a,b;c"], ["0987654321", "Bình", ""]],
        delimiter,
    )
    header, rows = read(path)
    assert header == ["phone", "name", "note"]
    assert rows == [Row(2, ["0912345678", "An", "a,b;c"]), Row(3, ["0987654321", "Bình", ""])]


def test_csv_utf8_bom_and_header_whitespace(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "bom.csv", [[" phone ", "Họ tên "], ["0912345678", " Nguyễn Văn An "]], ";", "utf-8-sig"
    )
    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    header, rows = read(path)
    assert header == ["phone", "Họ tên"]
    assert rows == [Row(2, ["0912345678", "Nguyễn Văn An"])]


def test_csv_quoted_delimiters_in_the_header_do_not_fool_the_sniffer(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "q.csv", [["Họ, tên", "phone"], ["Lê, Văn", "0912345678"]], ";")
    assert read(path) == (["Họ, tên", "phone"], [Row(2, ["Lê, Văn", "0912345678"])])


def test_csv_excel_sep_line_is_not_a_row() -> None:
    header, rows = read_bytes(b"sep=;\r\nphone;name\r\n0912345678;An\r\n")
    assert header == ["phone", "name"]
    assert rows == [Row(2, ["0912345678", "An"])]


def test_csv_row_numbers_match_the_spreadsheet(tmp_path: Path) -> None:
    path = write_csv(
        tmp_path / "gaps.csv",
        [
            ["phone", "name", "address"],
            ["0912000001", "An", "Line one\nLine two"],  # one spreadsheet row despite two lines
            [],
            ["", "", ""],
            ["0912000002", "Bình", ""],
        ],
    )
    _, rows = read(path)
    assert [row.number for row in rows] == [2, 5]
    assert rows[0].values[2] == "Line one\nLine two"


def test_csv_short_long_and_trailing_empty_cells() -> None:
    data = b"phone,name,city\n0912000001\n0912000002,An,,,,\n0912000003,An,HN,extra\n0912000004,,,,x\n"
    _, rows = read_bytes(data)
    assert rows == [
        Row(2, ["0912000001", "", ""]),
        Row(3, ["0912000002", "An", ""]),
        Row(4, ["0912000003", "An", "HN"], extra=True),
        Row(5, ["0912000004", "", ""], extra=True),
    ]


def test_csv_trailing_empty_header_cells_are_ignored() -> None:
    assert read_bytes(b"phone,name,,\n1,2\n") == (["phone", "name"], [Row(2, ["1", "2"])])


def test_text_is_nfc() -> None:
    decomposed = unicodedata.normalize("NFD", "Nguyễn Văn An")
    header, rows = read_bytes(f"phone,{unicodedata.normalize('NFD', 'Họ tên')}\n1,{decomposed}\n".encode())
    assert header == ["phone", "Họ tên"]
    assert rows[0].values[1] == "Nguyễn Văn An"


def test_header_only_gives_no_rows() -> None:
    assert read_bytes(b"phone,name\r\n") == (["phone", "name"], [])


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_file"),
        (b"\r\n\r\n", "empty_file"),
        (b"\xef\xbb\xbf", "empty_file"),
        (b",,\n0912345678,An\n", "no_header"),
        (b"\n\n0912345678,An\n", "no_header"),
    ],
)
def test_empty_files_and_missing_header(data: bytes, code: str) -> None:
    assert table_error(data).code == code


def test_empty_header_name_is_named_by_column() -> None:
    error = table_error(b"phone,,name\n1,2,3\n")
    assert error.code == "empty_header"
    assert "Column B" in error.message
    assert error.row == 1


def test_duplicate_header_names_ignore_case() -> None:
    error = table_error(b"phone,name,Phone\n1,2,3\n")
    assert error.code == "duplicate_header"
    assert "columns A and C" in error.message


def test_binary_files_are_refused() -> None:
    assert table_error(bytes(range(256)) * 4).code == "binary_file"
    no_nul = bytes(b % 31 + 1 for b in range(4096))  # control characters, but no NUL byte
    assert table_error(no_nul).code == "binary_file"


def test_utf16_is_refused_with_a_clear_reason() -> None:
    error = table_error("phone\tname\r\n0912345678\tAn\r\n".encode("utf-16"), "list.txt")
    assert error.code == "not_utf8"
    assert "UTF-16" in error.message


def test_unclosed_quote_is_reported_with_its_row() -> None:
    data = b'phone,name\n0912000001,An\n0912000002,"Binh\n' + b"0912000003,Chi\n" * 20_000
    rows: list[Row] = []
    table = open_table(io.BytesIO(data), "q.csv")
    with pytest.raises(TableError) as caught:
        rows.extend(table)
    assert caught.value.code == "bad_csv"
    assert caught.value.row == 3
    assert rows == [Row(2, ["0912000001", "An"])]


def test_csv_is_read_incrementally() -> None:
    """A 200 MB upload is generated on the fly; the first rows arrive after a few hundred KiB."""
    line = b"0912345678,Nguy\xe1\xbb\x85n V\xc4\x83n An,S\xe1\xbb\x91 12\n"
    rows_total = 200 * 1024 * 1024 // len(line)

    def chunks() -> Iterator[bytes]:
        yield b"phone,name,address\n"
        for _ in range(rows_total // 1000):
            yield line * 1000

    source = CountingStream(chunks())
    table = open_table(io.BufferedReader(source), "big.csv")
    rows = iter(table)
    first = [next(rows) for _ in range(1000)]
    assert first[-1] == Row(1001, ["0912345678", "Nguyễn Văn An", "Số 12"])
    assert source.served < 1024 * 1024
    table.close()


def test_reader_leaves_the_callers_stream_open(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "x.csv", [["phone"], ["1"]])
    with path.open("rb") as handle:
        assert list(open_table(handle, "x.csv")) == [Row(2, ["1"])]
        assert not handle.closed


def test_csv_from_a_pipe() -> None:
    data = b"phone,name\n" + b"0912345678,An\n" * 50_000
    with through_pipe(data) as pipe:
        table = open_table(pipe, None, "text/csv")
        assert table.header == ["phone", "name"]
        assert sum(1 for _ in table) == 50_000


# ---------------------------------------------------------------- encodings

SAMPLE = "Họ tên,Địa chỉ,phone\nNguyễn Văn An,Đường Trần Hưng Đạo,0912345678\nLê Thị Hồng,Hà Nội,0987654321\n"

# The letters SAMPLE needs, as TCVN3 (ABC) bytes and as VNI spellings (Windows-1252 text drawn by
# the VNI fonts), taken from the published code charts.
TCVN3 = {
    "ọ": 0xE4, "ê": 0xAA, "Đ": 0xA7, "ị": 0xDE, "ỉ": 0xD8, "ễ": 0xD4, "ă": 0xA8,
    "ư": 0xAD, "ờ": 0xEA, "ầ": 0xC7, "ạ": 0xB9, "ồ": 0xE5, "à": 0xB5, "ộ": 0xE9,
}  # fmt: skip
VNI = {
    "ọ": "oï", "ê": "eâ", "Đ": "Ñ", "ị": "ò", "ỉ": "æ", "ễ": "eã", "ă": "aê",
    "ư": "ö", "ờ": "ôø", "ầ": "aà", "ạ": "aï", "ồ": "oà", "à": "aø", "ộ": "oä",
}  # fmt: skip
TONE_MARKS = "\u0300\u0301\u0303\u0309\u0323"


def as_cp1258(text: str) -> bytes:
    """Windows' way: base letter (with circumflex/breve/horn precomposed) then a combining tone."""
    out = []
    for char in text:
        parts = unicodedata.normalize("NFD", char)
        base = unicodedata.normalize("NFC", "".join(c for c in parts if c not in TONE_MARKS))
        out.append(base + "".join(c for c in parts if c in TONE_MARKS))
    return "".join(out).encode("cp1258")


def as_tcvn3(text: str) -> bytes:
    return bytes(TCVN3[c] if ord(c) > 127 else ord(c) for c in text)


def as_vni(text: str) -> bytes:
    return "".join(VNI.get(c, c) for c in text).encode("cp1252")


def test_sample_encoders_produce_the_expected_bytes() -> None:
    assert as_vni("Việt Nam".replace("ệ", "ê")) == b"Vie\xe2t Nam"
    assert as_vni("Đường") == b"\xd1\xf6\xf4\xf8ng"
    assert as_tcvn3("Đạo") == b"\xa7\xb9o"
    assert as_cp1258("Việt") == b"Vi\xea\xf2t"  # ê, then the combining dot below


@pytest.mark.parametrize(
    ("encode", "name"),
    [
        (as_cp1258, "Windows-1258 (Vietnamese)"),
        (as_tcvn3, "TCVN3 (ABC)"),
        (as_vni, "VNI"),
        (lambda text: text.encode("cp1252"), "Windows-1252 (Western European)"),
    ],
)
def test_legacy_encodings_are_named(encode: Any, name: str) -> None:
    text = (
        SAMPLE if name != "Windows-1252 (Western European)" else "name,city\nFrançois Müller,Zürich\nJosé Peña,Málaga\n"
    )
    error = table_error(encode(text))
    assert error.code == "legacy_encoding"
    assert error.message.startswith(f"The file is not UTF-8; it looks like {name}.")
    assert error.row is None


def test_vni_and_tcvn3_advice_is_to_convert_not_just_resave() -> None:
    assert "UniKey" in table_error(as_vni(SAMPLE)).message
    assert "CSV UTF-8" in table_error(as_cp1258(SAMPLE)).message


def test_guess_needs_non_ascii_text() -> None:
    assert guess_legacy_encoding(b"phone,name\n0912345678,An\n") is None


def test_bad_bytes_after_the_sniffed_part_name_the_row() -> None:
    good = "phone,name\n" + "0912345678,Nguyễn Văn An\n" * 5000  # > 64 KiB of valid UTF-8
    assert len(good.encode()) > 64 * 1024
    data = good.encode() + as_tcvn3("0912345679,Lê Thị Hồng\n") + b"0912345680,An\n"
    table = open_table(io.BytesIO(data), "late.csv")
    seen: list[Row] = []
    with pytest.raises(TableError) as caught:
        seen.extend(table)
    assert caught.value.code == "legacy_encoding"
    assert caught.value.row == 5002
    assert "TCVN3" in caught.value.message
    assert len(seen) == 5000


def test_undecodable_row_without_a_guess() -> None:
    data = b"phone,name\n" + b"0912345678,An\n" * 6000 + b"0912345679,\xff\xfe\n"
    with pytest.raises(TableError) as caught:
        list(open_table(io.BytesIO(data), "late.csv"))
    assert caught.value.code == "not_utf8"
    assert caught.value.row == 6002


# ---------------------------------------------------------------- XLSX


def make_workbook(path: Path) -> Path:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "Danh sách"
    sheet.append(["phone", "Họ tên", "amount", "date", "flag"])
    sheet.append([912345678, "Nguyễn Văn An", 12.5, dt.datetime(2024, 5, 1), True])
    sheet.append([84912345679.0, "Trần Bình", "=C2*2", dt.date(2024, 5, 2), None])
    sheet.append([])
    sheet.append(["0912000111", None, None, dt.datetime(2024, 5, 1, 8, 30), None, "extra"])
    sheet["A6"] = "0912000222"
    sheet["B6"] = "merged"
    sheet.merge_cells("B6:C6")
    other = book.create_sheet("Ignored")
    other.append(["not", "this", "sheet"])
    book.active = 1  # the second sheet is the one Excel would open on; we still read the first
    book.save(path)
    return path


def patch_member(path: Path, member: str, old: bytes, new: bytes) -> None:
    with zipfile.ZipFile(path) as archive:
        items = [(info, archive.read(info.filename)) for info in archive.infolist()]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for info, data in items:
            if info.filename == member:
                assert old in data
                data = data.replace(old, new)
            archive.writestr(info, data)


EXPECTED_XLSX = (
    ["phone", "Họ tên", "amount", "date", "flag"],
    [
        Row(2, ["912345678", "Nguyễn Văn An", "12.5", "2024-05-01", "TRUE"]),
        Row(3, ["84912345679", "Trần Bình", "", "2024-05-02", ""]),
        Row(5, ["0912000111", "", "", "2024-05-01T08:30:00", ""], extra=True),
        Row(6, ["0912000222", "merged", "", "", ""]),
    ],
)


def test_xlsx_first_sheet_with_types_merges_and_gaps(tmp_path: Path) -> None:
    assert read(make_workbook(tmp_path / "list.xlsx")) == EXPECTED_XLSX


def test_xlsx_formulas_give_their_cached_values(tmp_path: Path) -> None:
    path = make_workbook(tmp_path / "cached.xlsx")
    # openpyxl does not calculate; give the formula the cached value Excel would have stored.
    patch_member(path, "xl/worksheets/sheet1.xml", b"<f>C2*2</f><v />", b"<f>C2*2</f><v>25</v>")
    _, rows = read(path)
    assert rows[1].values[2] == "25"


def test_xlsx_with_a_wrong_stored_dimension_is_read_to_the_end(tmp_path: Path) -> None:
    path = make_workbook(tmp_path / "dim.xlsx")
    patch_member(path, "xl/worksheets/sheet1.xml", b'<dimension ref="A1:F6" />', b'<dimension ref="A1:B2" />')
    assert read(path) == EXPECTED_XLSX


def test_xlsx_from_a_non_seekable_stream_is_spooled(tmp_path: Path) -> None:
    data = make_workbook(tmp_path / "pipe.xlsx").read_bytes()
    with through_pipe(data) as pipe:
        assert not pipe.seekable()
        table = open_table(pipe, "pipe.xlsx")
        assert (table.header, list(table)) == EXPECTED_XLSX


def test_workbook_named_csv_is_still_read_as_a_workbook(tmp_path: Path) -> None:
    path = make_workbook(tmp_path / "list.xlsx")
    assert read(path, filename="export.csv") == EXPECTED_XLSX
    assert read(path, filename="", content_type="application/octet-stream") == EXPECTED_XLSX


def test_xlsx_header_problems(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["phone", "name", "NAME"])
    book.save(tmp_path / "dup.xlsx")
    with pytest.raises(TableError) as caught:
        read(tmp_path / "dup.xlsx")
    assert caught.value.code == "duplicate_header"

    openpyxl.Workbook().save(tmp_path / "empty.xlsx")
    with pytest.raises(TableError) as caught:
        read(tmp_path / "empty.xlsx")
    assert caught.value.code == "empty_file"


def test_broken_and_mislabelled_workbooks(tmp_path: Path) -> None:
    data = make_workbook(tmp_path / "ok.xlsx").read_bytes()
    assert table_error(data[: len(data) // 2], "cut.xlsx").code == "bad_xlsx"
    assert table_error(b"PK\x03\x04" + b"\x00garbage" * 100, "junk.xlsx").code == "bad_xlsx"
    assert table_error(b"phone\n0912345678\n", "renamed.xlsx").code == "bad_xlsx"


@pytest.mark.parametrize(
    ("data", "filename"),
    [
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512, "old.xls"),
        (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + b"\x00" * 512, "old.csv"),
        (b"<html><table><tr><td>phone</td></tr></table></html>", "export.xls"),
        (b"%PDF-1.7\n", "list.pdf"),
        (b'{"recipients": []}', "list.json"),
    ],
)
def test_unsupported_formats(data: bytes, filename: str) -> None:
    assert table_error(data, filename).code == "unsupported_format"


def test_close_releases_the_workbook_but_not_the_callers_stream(tmp_path: Path) -> None:
    with make_workbook(tmp_path / "c.xlsx").open("rb") as handle:
        table: TableReader = open_table(handle, "c.xlsx")
        assert next(iter(table)).number == 2
        table.close()
        table.close()  # idempotent
        assert not handle.closed


def test_xlsx_vertical_merges_fill_down_in_their_first_column(tmp_path: Path) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["phone", "xa", "ghi_chu", "to"])
    sheet.append(["0912000001", "Xã A", "note", "1"])
    sheet.append(["0912000002", None, None, "2"])
    sheet.append(["0912000003", None, None, "3"])
    sheet.append(["0912000004", "Xã B", None, "4"])
    sheet.merge_cells("B2:C4")  # a block: its value belongs to column B, not copied across to C
    sheet.merge_cells("D1:D2")  # starts on the header row: left alone (D2 is emptied by the merge)
    path = tmp_path / "merged.xlsx"
    book.save(path)
    header, rows = read(path)
    assert header == ["phone", "xa", "ghi_chu", "to"]
    assert [row.values for row in rows] == [
        ["0912000001", "Xã A", "", ""],  # merging keeps only the top-left value ("note" is gone)
        ["0912000002", "Xã A", "", "2"],
        ["0912000003", "Xã A", "", "3"],
        ["0912000004", "Xã B", "", "4"],
    ]


@pytest.mark.parametrize(
    ("data", "row"),
    [
        (b'phone,name\n0912000001,"An\n0912000002,Binh\n', 2),  # never closed: would swallow the rest
        (b'phone,name\n0912000001,An\n0912000002,"Binh" Tran\n', 3),  # text after the closing quote
    ],
    ids=["unclosed-at-end", "text-after-quote"],
)
def test_malformed_quotes_are_errors_not_silent_merges(data: bytes, row: int) -> None:
    error = table_error(data)
    assert error.code == "bad_csv"
    assert error.row == row
    assert f"Row {row} cannot be read as CSV" in error.message


def test_quoted_cells_may_hold_separators_quotes_and_line_breaks() -> None:
    data = 'phone,name\n0912000001,"Nguyễn, ""An""\nline 2"\n'.encode()
    assert read_bytes(data)[1] == [Row(2, ["0912000001", 'Nguyễn, "An"\nline 2'])]


def excel_like_workbook(path: Path) -> Path:
    """What Excel writes and openpyxl does not: shared strings (with rich text runs and phonetic
    guides), custom date formats, the 1904 date system, absolute relationship targets and a first
    sheet that is not sheet1.xml; plus formula results of every type."""
    ns = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'
    rel = 'xmlns:r="http://schemas.openxmlformats.org/officeDocument/2006/relationships"'
    kind = "http://schemas.openxmlformats.org/officeDocument/2006/relationships"
    parts = {
        "[Content_Types].xml": '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>',
        "_rels/.rels": (
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{kind}/officeDocument" Target="/xl/workbook.xml"/></Relationships>'
        ),
        "xl/workbook.xml": (
            f'<workbook {ns} {rel}><workbookPr date1904="1"/><sheets>'
            '<sheet name="Danh sách" sheetId="2" r:id="rId7"/><sheet name="Khác" sheetId="1" r:id="rId1"/>'
            "</sheets></workbook>"
        ),
        "xl/_rels/workbook.xml.rels": (
            '<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships">'
            f'<Relationship Id="rId1" Type="{kind}/worksheet" Target="worksheets/sheet1.xml"/>'
            f'<Relationship Id="rId7" Type="{kind}/worksheet" Target="/xl/worksheets/sheet2.xml"/>'
            f'<Relationship Id="rId8" Type="{kind}/sharedStrings" Target="sharedStrings.xml"/>'
            f'<Relationship Id="rId9" Type="{kind}/styles" Target="styles.xml"/></Relationships>'
        ),
        "xl/sharedStrings.xml": (
            f'<sst {ns} count="4" uniqueCount="4"><si><t>phone</t></si><si><t>ten</t></si>'
            '<si><r><rPr><b/></rPr><t xml:space="preserve">Nguyễn </t></r><r><t>Văn An</t></r>'
            '<rPh sb="0" eb="1"><t>グエン</t></rPh></si><si><t>ngay</t></si></sst>'
        ),
        "xl/styles.xml": (
            f'<styleSheet {ns}><numFmts count="1"><numFmt numFmtId="164" formatCode="dd/mm/yyyy"/></numFmts>'
            '<cellXfs count="3"><xf numFmtId="0"/><xf numFmtId="164"/><xf numFmtId="49"/></cellXfs></styleSheet>'
        ),
        "xl/worksheets/sheet1.xml": f'<worksheet {ns}><sheetData><row r="1"><c t="inlineStr"><is><t>not this one'
        "</t></is></c></row></sheetData></worksheet>",
        "xl/worksheets/sheet2.xml": (
            f'<worksheet {ns}><dimension ref="A1:C4"/><sheetData>'
            '<row r="1"><c r="A1" t="s"><v>0</v></c><c r="B1" t="s"><v>1</v></c><c r="C1" t="s"><v>3</v></c></row>'
            '<row r="2"><c r="A2" s="2" t="s"><v>0</v></c><c r="B2" t="s"><v>2</v></c>'
            '<c r="C2" s="1"><v>1</v></c></row>'  # day 1 of the 1904 system
            '<row r="3"><c r="A3"><f>TEXT(912345678,"0")</f><v>912345678</v></c>'
            '<c r="B3" t="str"><f>"Lê"&amp;" Chi"</f><v>Lê Chi</v></c>'
            '<c r="C3" t="d"><v>2026-04-01T00:00:00</v></c></row>'
            '<row r="4"><c r="A4" t="e"><v>#N/A</v></c><c r="B4" t="b"><v>0</v></c>'
            '<c r="C4" s="1"><v>44287.5</v></c></row>'
            "</sheetData></worksheet>"
        ),
    }
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, text in parts.items():
            archive.writestr(name, text)
    return path


def test_xlsx_as_excel_writes_it(tmp_path: Path) -> None:
    header, rows = read(excel_like_workbook(tmp_path / "excel.xlsx"))
    assert header == ["phone", "ten", "ngay"]
    assert rows == [
        Row(2, ["phone", "Nguyễn Văn An", "1904-01-02"]),
        Row(3, ["912345678", "Lê Chi", "2026-04-01"]),
        Row(4, ["#N/A", "FALSE", "2025-04-02T12:00:00"]),
    ]


def test_xlsx_with_a_doctype_is_refused(tmp_path: Path) -> None:
    path = excel_like_workbook(tmp_path / "evil.xlsx")
    bomb = b'<!DOCTYPE x [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]>'
    patch_member(path, "xl/sharedStrings.xml", b"<sst ", bomb + b"<sst ")
    assert table_error(path.read_bytes(), "evil.xlsx").code == "bad_xlsx"


def test_xlsx_reader_agrees_with_openpyxl(tmp_path: Path) -> None:
    """Our expat reader against openpyxl's own reading of the same varied workbook."""
    from campaigns.tabular_xlsx import _cell_text

    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(["phone", "text", "number", "when", "flag", "formula"])
    values: list[Any] = [
        "  Nguyễn  ",
        12,
        -3.25,
        1e20,
        0.1,
        dt.datetime(2026, 4, 1, 7, 30),
        dt.date(1999, 12, 31),
        dt.time(22, 15),
        True,
        None,
        "=A2&B2",
        "x" * 300,
    ]
    for n in range(60):
        sheet.append([f"09{n:08d}", *(values[(n + k) % len(values)] for k in range(5))])
    sheet["H70"] = "far right"
    path = tmp_path / "varied.xlsx"
    book.save(path)

    expected = openpyxl.load_workbook(path, read_only=True, data_only=True).worksheets[0]
    expected_rows = [[_cell_text(v) for v in row] for row in expected.iter_rows(min_row=2, values_only=True)]
    _, rows = read(path)
    assert [r.values for r in rows] == [(cells + [""] * 6)[:6] for cells in expected_rows if any(cells)]
    assert [r.extra for r in rows][-1] is True
