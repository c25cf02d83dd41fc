"""Fast MIME building for bulk email: one rendered template in, wire-ready RFC 5322 bytes out.

:class:`MessageBuilder` is made once per campaign (sender, unsubscribe, VERP policy) and then
builds one :class:`BuiltMessage` per recipient. It writes the headers and MIME structure itself
instead of going through ``email.message.EmailMessage``: ``policy.default`` costs ~2.5 ms per
message and the compat32 classes ~0.4 ms, while this builder takes ~60 us for a Vietnamese
credential mail with text and HTML (~16,000/s on one core) and ~130 us when the text part has to
be derived from the HTML (~7,700/s). The tests parse the output back with the ``email`` package.

The output is DKIM-safe by construction: 7-bit only (UTF-8 text goes quoted-printable or base64,
whichever is shorter), every line <= 78 characters, CRLF line endings, so no relay has a reason to
re-encode or re-wrap what we signed.

Identifiers that let a bounce find its message again:

* ``Message-ID: <{message_key}.{random}@{sender domain}>`` -- :func:`message_key_from_message_id`
  reads the key back from a DSN's copy of the original headers;
* envelope sender ``bounce+{message_key}@{domain}`` with VERP on -- the bounce itself is then
  addressed to the key (:func:`gateways.smtp.bounces.parse_bounce` extracts it).
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass
from email.utils import formataddr, formatdate, parseaddr

from gateways.smtp.html_text import html_to_text

__all__ = [
    "BuiltMessage",
    "EmailTemplateParts",
    "MessageBuilder",
    "VERP_PREFIX",
    "message_key_from_message_id",
]

VERP_PREFIX = "bounce+"

# A message key ends up in a Message-ID and in a VERP local part (max 64 octets), so it must be
# plain atext without dots: the dot separates it from the random part of the Message-ID.
_MESSAGE_KEY = re.compile(r"[A-Za-z0-9_=-]{1,57}")
_ASCII_BYTES = bytes(range(128))
# 39 bytes -> 52 base64 chars -> a 64-char encoded word: "Subject: " + word stays <= 78.
_ENCODED_WORD_MAX_BYTES = 39
_MAX_LINE = 78


@dataclass(frozen=True, slots=True)
class EmailTemplateParts:
    """A template already rendered for one recipient. At least one of ``text``/``html`` is set."""

    subject: str
    text: str | None
    html: str | None


@dataclass(frozen=True, slots=True)
class BuiltMessage:
    """Wire-ready message plus the envelope it must travel in."""

    data: bytes
    message_id: str  # "<key.random@sender-domain>", angle brackets included
    envelope_from: str  # MAIL FROM: the sender, or bounce+<key>@domain with VERP
    recipient: str  # RCPT TO: plain ASCII address (IDN domains in punycode)


class MessageBuilder:
    """Builds per-recipient messages for one sender; cheap per call, safe to share in a process.

    ``list_unsubscribe`` is the List-Unsubscribe value (``<https://...>, <mailto:...>``, brackets
    added when missing); ``{message_key}`` in it is replaced per message so each recipient gets
    their own link. An https link also adds ``List-Unsubscribe-Post: List-Unsubscribe=One-Click``
    (RFC 8058). Credential mails are not subscription mail: leave it ``None`` for those.

    ``verp_domain`` (or ``verp=True``, which uses the sender's domain) turns on VERP envelope
    senders ``bounce+<message_key>@<domain>``; the domain must deliver that address to the bounce
    receiver. Without VERP the envelope sender is the From address, so SPF aligns with From.
    """

    def __init__(
        self,
        sender: str,
        *,
        list_unsubscribe: str | None = None,
        verp_domain: str | None = None,
        verp: bool = False,
    ) -> None:
        _reject_line_breaks(sender, "sender")
        name, address = parseaddr(sender)
        self.sender_address = _ascii_address(address, what="sender")
        self.sender_domain = self.sender_address.rpartition("@")[2]
        self._from_header = _address_header("From", name, self.sender_address)
        self._verp_domain: str | None = None
        if verp_domain or verp:
            self._verp_domain = _ascii_domain(verp_domain or self.sender_domain)
        self._unsubscribe_template: str | None = None
        self._one_click = False
        if list_unsubscribe:
            _reject_line_breaks(list_unsubscribe, "list_unsubscribe")
            links = [link.strip() for link in list_unsubscribe.split(",") if link.strip()]
            links = [link if link.startswith("<") else f"<{link}>" for link in links]
            self._unsubscribe_template = _fold_list("List-Unsubscribe", links)
            self._one_click = any(link.lower().startswith("<https://") for link in links)

    def build(self, to: str, parts: EmailTemplateParts, *, message_key: str) -> BuiltMessage:
        """Return the message for ``to`` (``addr`` or ``Name <addr>``).

        Raises ``ValueError`` for an address that is not plain ASCII after IDNA (SMTPUTF8 is not
        used: many relays lack it), a malformed ``message_key``, or parts with neither body.
        """
        if not _MESSAGE_KEY.fullmatch(message_key):
            raise ValueError(f"message_key {message_key!r} must be 1-57 characters of A-Z a-z 0-9 _ = -")
        if parts.text is None and parts.html is None:
            raise ValueError("an email needs a text or an HTML body")
        _reject_line_breaks(to, "recipient")
        # A bare address (the usual case) needs no RFC 5322 parse, the slowest step of a build.
        to_name, to_address = ("", to) if not any(c in to for c in '<>"(') else parseaddr(to)
        recipient = _ascii_address(to_address, what="recipient")
        token = secrets.token_hex(8)
        message_id = f"<{message_key}.{token}@{self.sender_domain}>"

        headers = [
            self._from_header,
            _address_header("To", to_name, recipient),
            _subject_header(parts.subject),
            f"Date: {formatdate(usegmt=True)}",
            f"Message-ID: {message_id}",
            "MIME-Version: 1.0",
        ]
        if self._unsubscribe_template is not None:
            headers.append(self._unsubscribe_template.replace("{message_key}", message_key))
            if self._one_click:
                headers.append("List-Unsubscribe-Post: List-Unsubscribe=One-Click")

        text = parts.text if parts.text is not None else html_to_text(parts.html or "")
        if parts.html is None:
            # Single part: its Content-* lines join the top-level headers. SMTP data must end
            # with CRLF; add one only where the text did not already end with a line break.
            part = _text_part("plain", text)
            data = "\r\n".join(headers) + "\r\n" + part + ("" if part.endswith("\r\n") else "\r\n")
        else:
            # "=_" never occurs in quoted-printable or base64 output, so the boundary cannot
            # collide with a body line whatever the recipient's data contains. The CRLF before
            # each "--boundary" belongs to the delimiter (RFC 2046), so bodies stay exact.
            boundary = f"=_loa_{token}"
            headers.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"')
            data = (
                "\r\n".join(headers)
                + f"\r\n\r\n--{boundary}\r\n{_text_part('plain', text)}"
                + f"\r\n--{boundary}\r\n{_text_part('html', parts.html)}"
                + f"\r\n--{boundary}--\r\n"
            )

        envelope_from = self.sender_address
        if self._verp_domain is not None:
            envelope_from = f"{VERP_PREFIX}{message_key}@{self._verp_domain}"
        return BuiltMessage(
            data=data.encode("ascii"), message_id=message_id, envelope_from=envelope_from, recipient=recipient
        )


def message_key_from_message_id(message_id: str) -> str | None:
    """The ``message_key`` of a Message-ID built here, or ``None`` for any other Message-ID."""
    local = message_id.strip().strip("<>").partition("@")[0]
    key, dot, token = local.rpartition(".")
    if not dot or len(token) != 16 or token.strip("0123456789abcdef") or not _MESSAGE_KEY.fullmatch(key):
        return None
    return key


# -- headers ---------------------------------------------------------------------------------


def _reject_line_breaks(value: str, what: str) -> None:
    # A CR or LF in a header value would let template data inject headers of its own.
    if "\r" in value or "\n" in value:
        raise ValueError(f"{what} must not contain line breaks")


def _ascii_domain(domain: str) -> str:
    domain = domain.strip().rstrip(".")
    if not domain or any(ch.isspace() for ch in domain):
        raise ValueError(f"invalid domain {domain!r}")
    if domain.isascii():
        return domain.lower()
    try:
        return domain.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise ValueError(f"invalid domain {domain!r}: {exc}") from exc


def _ascii_address(address: str, *, what: str) -> str:
    _reject_line_breaks(address, what)
    local, at, domain = address.strip().rpartition("@")
    if not at or not local or not domain:
        raise ValueError(f"{what} {address!r} is not an email address")
    if not local.isascii() or any(ch.isspace() or ch in "<>()," for ch in local):
        raise ValueError(f"{what} {address!r}: the local part must be plain ASCII")
    return f"{local}@{_ascii_domain(domain)}"


def _address_header(name: str, display_name: str, address: str) -> str:
    if not display_name:
        return f"{name}: {address}"
    _reject_line_breaks(display_name, f"{name} display name")
    if display_name.isascii():
        line = f"{name}: {formataddr((display_name, address))}"
        if len(line) <= _MAX_LINE:
            return line
    # Non-ASCII names (Vietnamese) become RFC 2047 encoded words; phrases may hold several.
    words = _encoded_words(display_name)
    return f"{name}: " + "\r\n ".join(words) + f"\r\n <{address}>"


def _subject_header(subject: str) -> str:
    subject = " ".join(subject.split())  # also neutralises CR/LF from template data
    if subject.isascii() and "=?" not in subject:
        return _fold_words("Subject:", subject.split(" ")) if subject else "Subject: "
    return "Subject: " + "\r\n ".join(_encoded_words(subject))


def _fold_words(first: str, words: list[str]) -> str:
    lines = [first]
    for word in words:
        if len(lines[-1]) + 1 + len(word) > _MAX_LINE and lines[-1].strip():
            lines.append("")
        lines[-1] = f"{lines[-1]} {word}"
    return "\r\n".join(lines)


def _fold_list(name: str, items: list[str]) -> str:
    lines = [f"{name}:"]
    for index, item in enumerate(items):
        piece = f" {item}" + ("," if index < len(items) - 1 else "")
        if len(lines[-1]) + len(piece) > _MAX_LINE and index:
            lines.append("")
        lines[-1] += piece
    return "\r\n".join(lines)


def _encoded_words(text: str) -> list[str]:
    """UTF-8 base64 encoded words, each <= 75 chars, never splitting a character (RFC 2047 5)."""
    data = text.encode("utf-8")
    words: list[str] = []
    start, size = 0, len(data)
    while start < size:
        end = min(start + _ENCODED_WORD_MAX_BYTES, size)
        while end < size and data[end] & 0xC0 == 0x80:  # a continuation byte: back up to its start
            end -= 1
        words.append(_encoded_word(data[start:end]))
        start = end
    return words


def _encoded_word(data: bytes) -> str:
    return f"=?utf-8?b?{base64.b64encode(data).decode('ascii')}?="


# -- bodies ----------------------------------------------------------------------------------


def _text_part(subtype: str, text: str) -> str:
    """Headers + body of one text part: 7-bit, CRLF, lines <= 76, no CRLF added at the end."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").encode("utf-8")
    non_ascii = len(lines.translate(None, _ASCII_BYTES))
    # Quoted-printable costs 2 extra bytes per non-ASCII byte, base64 a third of everything:
    # mostly-ASCII text stays readable as QP, diacritic-heavy Vietnamese is smaller as base64.
    if 2 * non_ascii <= len(lines) // 3:
        encoding = "quoted-printable"
        body = binascii.b2a_qp(lines, istext=True).replace(b"\n", b"\r\n")
    else:
        encoding = "base64"
        # Text is base64-encoded in its canonical form, with CRLF line breaks (RFC 2045 6.8).
        canonical = lines.replace(b"\n", b"\r\n")
        body = base64.encodebytes(canonical).rstrip(b"\n").replace(b"\n", b"\r\n")
    return (
        f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
        f"Content-Transfer-Encoding: {encoding}\r\n\r\n" + body.decode("ascii")
    )
