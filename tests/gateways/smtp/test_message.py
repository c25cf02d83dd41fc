"""MessageBuilder output parsed back with the email package (policy.default, the strict one)."""

from __future__ import annotations

import email
import re
from email import policy
from email.message import EmailMessage

import pytest

from gateways.smtp.message import EmailTemplateParts, MessageBuilder, message_key_from_message_id

SENDER = "Tổng cục Thống kê <tongdieutra@gso.gov.vn>"
SUBJECT = "Thông tin đăng nhập Tổng điều tra dân số và nhà ở 2025 – đơn vị HN-0042"
HTML = (
    "<html><head><style>p { color: red }</style></head><body>"
    "<p>Kính gửi <b>Nguyễn Văn Ánh</b>,</p>"
    "<p>Mã đơn vị: <b>HN-0042</b><br>Mật khẩu: <code>x7#Qk9&amp;!</code></p>"
    '<p>Đăng nhập tại <a href="https://dieutra.gso.gov.vn/login">cổng điều tra</a>.</p>'
    "</body></html>"
)
TEXT = "Kính gửi Nguyễn Văn Ánh,\n\nMã đơn vị: HN-0042\nMật khẩu: x7#Qk9&!\n"


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None, f"no text/{subtype} part"
    content = part.get_content()
    assert isinstance(content, str)
    # The wire form has CRLF line breaks and the email package hands them back as they are.
    return content.replace("\r\n", "\n")


def build(parts: EmailTemplateParts, *, builder: MessageBuilder | None = None, to: str = "a.nguyen@thudo.vn") -> bytes:
    return (builder or MessageBuilder(SENDER)).build(to, parts, message_key="m42").data


def test_vietnamese_headers_and_bodies_round_trip() -> None:
    built = MessageBuilder(SENDER).build(
        "Nguyễn Văn A <a.nguyen@thudo.vn>", EmailTemplateParts(SUBJECT, TEXT, HTML), message_key="m42"
    )
    message = parse(built.data)

    assert message["Subject"] == SUBJECT
    assert message["From"].addresses[0].display_name == "Tổng cục Thống kê"
    assert message["From"].addresses[0].addr_spec == "tongdieutra@gso.gov.vn"
    assert message["To"].addresses[0].display_name == "Nguyễn Văn A"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime.tzinfo is not None
    assert message.get_content_type() == "multipart/alternative"
    assert [part.get_content_type() for part in message.iter_parts()] == ["text/plain", "text/html"]
    assert body(message, "plain") == TEXT
    assert body(message, "html") == HTML
    assert built.recipient == "a.nguyen@thudo.vn"
    assert not message.defects


def test_message_id_on_sender_domain_unique_and_mapped_back() -> None:
    builder = MessageBuilder(SENDER)
    parts = EmailTemplateParts("s", "t", None)
    first = builder.build("x@example.vn", parts, message_key="m42")
    second = builder.build("x@example.vn", parts, message_key="m42")

    assert re.fullmatch(r"<m42\.[0-9a-f]{16}@gso\.gov\.vn>", first.message_id)
    assert parse(first.data)["Message-ID"] == first.message_id
    assert first.message_id != second.message_id
    assert message_key_from_message_id(first.message_id) == "m42"
    assert message_key_from_message_id("<CAF=abc@mail.gmail.com>") is None
    assert message_key_from_message_id("<m42.nothex@gso.gov.vn>") is None


def test_text_part_derived_from_html() -> None:
    message = parse(build(EmailTemplateParts(SUBJECT, None, HTML)))

    text = body(message, "plain")
    assert "Kính gửi Nguyễn Văn Ánh," in text
    assert "Mã đơn vị: HN-0042\nMật khẩu: x7#Qk9&!" in text  # <br> kept, &amp; unescaped
    assert "cổng điều tra (https://dieutra.gso.gov.vn/login)" in text  # link kept
    assert "color" not in text
    assert "<" not in text
    assert body(message, "html") == HTML


def test_text_only_is_a_single_part() -> None:
    message = parse(build(EmailTemplateParts("Xin chào", TEXT, None)))

    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content().replace("\r\n", "\n") == TEXT


def test_wire_format_is_dkim_safe() -> None:
    long_line = "Dòng rất dài không có chỗ xuống dòng " * 20 + "\n  trailing spaces   \n"
    data = build(EmailTemplateParts(SUBJECT * 3, long_line, "<p>" + "x" * 500 + "</p>"))

    assert data.isascii()
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")
    assert max(len(line) for line in data.split(b"\r\n")) <= 78
    message = parse(data)
    assert body(message, "plain") == long_line
    assert message["Subject"] == SUBJECT * 3


def test_ascii_text_stays_readable_quoted_printable() -> None:
    data = build(EmailTemplateParts("Hello", "Your code is ABC-123.\n", None))

    assert b"Content-Transfer-Encoding: quoted-printable" in data
    assert data.endswith(b"\r\n\r\nYour code is ABC-123.\r\n")
    assert parse(data).get_content() == "Your code is ABC-123.\r\n"


def test_long_ascii_subject_is_folded() -> None:
    subject = "Census 2025 " + " ".join(f"word{i}" for i in range(40))
    message = parse(build(EmailTemplateParts(subject, "x", None)))

    assert message["Subject"] == subject


def test_header_injection_is_neutralised() -> None:
    message = parse(build(EmailTemplateParts("Hi\r\nBcc: victim@example.com", "x", None)))

    assert message["Bcc"] is None
    assert message["Subject"] == "Hi Bcc: victim@example.com"
    with pytest.raises(ValueError, match="line breaks"):
        MessageBuilder(SENDER).build("a@b.vn\r\nBcc: c@d.vn", EmailTemplateParts("s", "x", None), message_key="k")


def test_envelope_without_and_with_verp() -> None:
    parts = EmailTemplateParts("s", "x", None)

    assert MessageBuilder(SENDER).build("a@b.vn", parts, message_key="m7").envelope_from == "tongdieutra@gso.gov.vn"
    verp_own = MessageBuilder(SENDER, verp=True).build("a@b.vn", parts, message_key="m7")
    assert verp_own.envelope_from == "bounce+m7@gso.gov.vn"
    verp_other = MessageBuilder(SENDER, verp_domain="bounces.gso.gov.vn").build("a@b.vn", parts, message_key="m7")
    assert verp_other.envelope_from == "bounce+m7@bounces.gso.gov.vn"
    # The From header never changes with VERP: DMARC aligns on it.
    assert parse(verp_other.data)["From"].addresses[0].addr_spec == "tongdieutra@gso.gov.vn"


def test_list_unsubscribe_one_click_per_recipient() -> None:
    builder = MessageBuilder(SENDER, list_unsubscribe="https://gso.gov.vn/unsub/{message_key}, mailto:unsub@gso.gov.vn")
    message = parse(builder.build("a@b.vn", EmailTemplateParts("s", "x", None), message_key="m9").data)

    assert message["List-Unsubscribe"] == "<https://gso.gov.vn/unsub/m9>, <mailto:unsub@gso.gov.vn>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"


def test_mailto_only_unsubscribe_has_no_one_click_and_none_by_default() -> None:
    mailto = parse(
        build(
            EmailTemplateParts("s", "x", None),
            builder=MessageBuilder(SENDER, list_unsubscribe="<mailto:u@gso.gov.vn>"),
        )
    )
    plain = parse(build(EmailTemplateParts("s", "x", None)))

    assert mailto["List-Unsubscribe"] == "<mailto:u@gso.gov.vn>"
    assert mailto["List-Unsubscribe-Post"] is None
    assert plain["List-Unsubscribe"] is None


def test_idn_recipient_domain_becomes_punycode() -> None:
    built = MessageBuilder(SENDER).build("lan@bộgiáodục.vn", EmailTemplateParts("s", "x", None), message_key="k")

    assert built.recipient == "lan@xn--bgiodc-rta7842dida.vn"
    assert parse(built.data)["To"] == "lan@xn--bgiodc-rta7842dida.vn"


@pytest.mark.parametrize(
    ("to", "key", "parts", "message"),
    [
        ("người@b.vn", "k", EmailTemplateParts("s", "x", None), "plain ASCII"),
        ("not-an-address", "k", EmailTemplateParts("s", "x", None), "not an email address"),
        ("a@b.vn", "has.dot", EmailTemplateParts("s", "x", None), "message_key"),
        ("a@b.vn", "x" * 58, EmailTemplateParts("s", "x", None), "message_key"),
        ("a@b.vn", "k", EmailTemplateParts("s", None, None), "text or an HTML body"),
    ],
)
def test_invalid_input_is_refused(to: str, key: str, parts: EmailTemplateParts, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MessageBuilder(SENDER).build(to, parts, message_key=key)


def test_invalid_sender_is_refused() -> None:
    with pytest.raises(ValueError, match="sender"):
        MessageBuilder("Tổng cục Thống kê")
