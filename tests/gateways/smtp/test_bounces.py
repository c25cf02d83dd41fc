"""parse_bounce on realistic bounces: Postfix, Exchange, Gmail-style, qmail, delays, non-bounces."""

from __future__ import annotations

import base64

import pytest

from gateways.smtp.bounces import Bounce, BounceKind, BounceParseError, parse_bounce
from gateways.smtp.message import EmailTemplateParts, MessageBuilder, message_key_from_message_id

POSTFIX_DSN = b"""\
Return-Path: <>
Delivered-To: bounce+m1042@gso.gov.vn
Received: by mail.gso.gov.vn (Postfix) id 3F2A1C0042; Tue, 14 Jan 2025 09:12:03 +0700 (+07)
Date: Tue, 14 Jan 2025 09:12:03 +0700 (+07)
From: MAILER-DAEMON@mx1.thudo.vn (Mail Delivery System)
Subject: Undelivered Mail Returned to Sender
To: bounce+m1042@gso.gov.vn
Auto-Submitted: auto-replied
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="3F2A1C0042.1736820723/mx1.thudo.vn"
Message-Id: <20250114021203.3F2A1C0042@mx1.thudo.vn>

This is a MIME-encapsulated message.

--3F2A1C0042.1736820723/mx1.thudo.vn
Content-Description: Notification
Content-Type: text/plain; charset=us-ascii

This is the mail system at host mx1.thudo.vn.

I'm sorry to have to inform you that your message could not
be delivered to one or more recipients.

<nguyen.van.a@thudo.vn>: host mail.thudo.vn[10.0.0.5] said: 550 5.1.1
    <nguyen.van.a@thudo.vn>: Recipient address rejected: User unknown in virtual
    mailbox table (in reply to RCPT TO command)

--3F2A1C0042.1736820723/mx1.thudo.vn
Content-Description: Delivery report
Content-Type: message/delivery-status

Reporting-MTA: dns; mx1.thudo.vn
X-Postfix-Queue-ID: 3F2A1C0042
X-Postfix-Sender: rfc822; bounce+m1042@gso.gov.vn
Arrival-Date: Tue, 14 Jan 2025 09:12:02 +0700 (+07)

Final-Recipient: rfc822; nguyen.van.a@thudo.vn
Original-Recipient: rfc822;nguyen.van.a@thudo.vn
Action: failed
Status: 5.1.1
Remote-MTA: dns; mail.thudo.vn
Diagnostic-Code: smtp; 550 5.1.1 <nguyen.van.a@thudo.vn>: Recipient address
    rejected: User unknown in virtual mailbox table

--3F2A1C0042.1736820723/mx1.thudo.vn
Content-Description: Undelivered Message Headers
Content-Type: text/rfc822-headers

Return-Path: <bounce+m1042@gso.gov.vn>
From: =?utf-8?b?VOG7lW5nIGPhu6VjIFRo4buRbmcga8Oq?= <tongdieutra@gso.gov.vn>
To: nguyen.van.a@thudo.vn
Subject: =?utf-8?b?VGjDtG5nIHRpbiDEkcSDbmcgbmjhuq1w?=
Message-ID: <m1042.9f8e7d6c5b4a3921@gso.gov.vn>
MIME-Version: 1.0

--3F2A1C0042.1736820723/mx1.thudo.vn--
""".replace(b"\n", b"\r\n")

EXCHANGE_NDR = b"""\
From: postmaster@contoso.vn
To: <tongdieutra@gso.gov.vn>
Date: Wed, 15 Jan 2025 10:01:44 +0000
Content-Type: multipart/report; report-type=delivery-status;
\tboundary="b0c1d2e3-aaaa-bbbb-cccc-0123456789ab"
Content-Language: en-US
Message-ID: <6a1b2c3d-4e5f@EX01.contoso.vn>
In-Reply-To: <m77.00112233aabbccdd@gso.gov.vn>
Subject: Undeliverable: =?utf-8?b?VGjDtG5nIHRpbiDEkcSDbmcgbmjhuq1w?=
Auto-Submitted: auto-replied
MIME-Version: 1.0

--b0c1d2e3-aaaa-bbbb-cccc-0123456789ab
Content-Type: multipart/alternative; differences=Content-Type;
\tboundary="c1d2e3f4-dddd-eeee-ffff-0123456789ab"

--c1d2e3f4-dddd-eeee-ffff-0123456789ab
Content-Type: text/plain; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

Delivery has failed to these recipients or groups:

tran.thi.b@contoso.vn
The email address you entered couldn't be found.

--c1d2e3f4-dddd-eeee-ffff-0123456789ab
Content-Type: text/html; charset="us-ascii"
Content-Transfer-Encoding: quoted-printable

<html><body><p>Delivery has failed to these recipients or groups:</p></body></html>

--c1d2e3f4-dddd-eeee-ffff-0123456789ab--

--b0c1d2e3-aaaa-bbbb-cccc-0123456789ab
Content-Type: message/delivery-status

Reporting-MTA: dns;EX01.contoso.vn
Received-From-MTA: dns;mail.gso.gov.vn
Arrival-Date: Wed, 15 Jan 2025 10:01:43 +0000

Original-Recipient: rfc822;tran.thi.b@contoso.vn
Final-Recipient: rfc822;tran.thi.b@contoso.vn
Action: failed
Status: 5.1.10
Diagnostic-Code: smtp;550 5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup

--b0c1d2e3-aaaa-bbbb-cccc-0123456789ab
Content-Type: message/rfc822

Return-Path: <tongdieutra@gso.gov.vn>
From: tongdieutra@gso.gov.vn
To: tran.thi.b@contoso.vn
Subject: =?utf-8?b?VGjDtG5nIHRpbiDEkcSDbmcgbmjhuq1w?=
Message-ID: <m77.00112233aabbccdd@gso.gov.vn>
MIME-Version: 1.0
Content-Type: text/plain; charset="utf-8"

Original body.

--b0c1d2e3-aaaa-bbbb-cccc-0123456789ab--
""".replace(b"\n", b"\r\n")

DELAYED_DSN = b"""\
From: MAILER-DAEMON@mx1.gso.gov.vn (Mail Delivery System)
Subject: Delayed Mail (still being retried)
To: bounce+m5@gso.gov.vn
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B1"

--B1
Content-Type: text/plain

This is the mail system at host mx1.gso.gov.vn. Your message is still being retried.

--B1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx1.gso.gov.vn

Final-Recipient: rfc822; le.c@slow.vn
Action: delayed
Status: 4.4.1
Diagnostic-Code: X-Postfix; connect to mx.slow.vn[203.0.113.7]:25: Connection timed out
Will-Retry-Until: Sat, 18 Jan 2025 09:12:02 +0700 (+07)

--B1--
"""

EXPIRED_DSN = DELAYED_DSN.replace(b"Action: delayed", b"Action: failed").replace(b"4.4.1", b"4.4.7")

SUCCESS_DSN = DELAYED_DSN.replace(b"Action: delayed", b"Action: delivered").replace(b"4.4.1", b"2.0.0")

QMAIL_PLAIN = b"""\
Return-Path: <>
From: MAILER-DAEMON@mail.tinh.vn
To: bounce+m900@gso.gov.vn
Subject: failure notice

Hi. This is the qmail-send program at mail.tinh.vn.
I'm afraid I wasn't able to deliver your message to the following addresses.
This is a permanent error; I've given up. Sorry it didn't work out.

<pham.d@tinh.vn>:
Remote host said: 550 No such user here

--- Below this line is a copy of the message.

Return-Path: <bounce+m900@gso.gov.vn>
From: tongdieutra@gso.gov.vn
To: pham.d@tinh.vn
Message-ID: <m900.0123456789abcdef@gso.gov.vn>
Subject: census

body
"""

SENDMAIL_PLAIN = b"""\
From: Mail Delivery Subsystem <MAILER-DAEMON@relay.vn>
To: <bounce+m33@gso.gov.vn>
Subject: Returned mail: see transcript for details

Your message from <bounce+m33@gso.gov.vn> could not be delivered.

   ----- The following addresses had permanent fatal errors -----
<hoang.e@relay.vn>
    (reason: 550 5.1.1 <hoang.e@relay.vn>... User unknown)

   ----- Transcript of session follows -----
... while talking to mx.relay.vn. (version 8.15.2):
>>> DATA
<<< 550 5.1.1 <hoang.e@relay.vn>... User unknown
"""

PLAIN_SOFT = b"""\
From: Mail Delivery Subsystem <mailer-daemon@relay.vn>
To: tongdieutra@gso.gov.vn
Subject: Warning: message delayed 4 hours

The original message was received at Tue, 14 Jan 2025 from gso.gov.vn.
Mail server for recipient is not answering; will keep trying for 5 days.
"""

NOT_A_BOUNCE = b"""\
From: Nguyen Van A <nguyen.van.a@thudo.vn>
To: tongdieutra@gso.gov.vn
Subject: Re: Thong tin dang nhap

Cam on, toi da nhan duoc mat khau.
"""


def test_postfix_dsn() -> None:
    bounce = parse_bounce(POSTFIX_DSN)

    assert bounce == Bounce(
        kind=BounceKind.HARD,
        recipient="nguyen.van.a@thudo.vn",
        status="5.1.1",
        diagnostic=(
            "550 5.1.1 <nguyen.van.a@thudo.vn>: Recipient address rejected: User unknown in virtual mailbox table"
        ),
        verp_token="m1042",
        original_message_id="<m1042.9f8e7d6c5b4a3921@gso.gov.vn>",
        action="failed",
    )
    assert bounce.original_message_id is not None
    assert message_key_from_message_id(bounce.original_message_id) == "m1042"


def test_exchange_ndr_without_verp() -> None:
    bounce = parse_bounce(EXCHANGE_NDR)

    assert bounce.kind is BounceKind.HARD
    assert bounce.recipient == "tran.thi.b@contoso.vn"
    assert bounce.status == "5.1.10"
    assert bounce.diagnostic is not None
    assert "RecipientNotFound" in bounce.diagnostic
    assert bounce.verp_token is None
    assert bounce.original_message_id == "<m77.00112233aabbccdd@gso.gov.vn>"


def test_delayed_dsn_is_soft_and_not_final() -> None:
    bounce = parse_bounce(DELAYED_DSN)

    assert (bounce.kind, bounce.action, bounce.status) == (BounceKind.SOFT, "delayed", "4.4.1")
    assert bounce.recipient == "le.c@slow.vn"
    assert bounce.verp_token == "m5"
    assert bounce.original_message_id is None


def test_expired_after_retries_is_a_soft_failure() -> None:
    bounce = parse_bounce(EXPIRED_DSN)

    assert (bounce.kind, bounce.action, bounce.status) == (BounceKind.SOFT, "failed", "4.4.7")


def test_success_report_is_no_bounce() -> None:
    with pytest.raises(BounceParseError, match="delivered"):
        parse_bounce(SUCCESS_DSN)


def test_qmail_plain_bounce() -> None:
    bounce = parse_bounce(QMAIL_PLAIN)

    assert bounce.kind is BounceKind.HARD
    assert bounce.recipient == "pham.d@tinh.vn"
    assert bounce.status is None
    assert bounce.diagnostic == "Remote host said: 550 No such user here"
    assert bounce.verp_token == "m900"
    assert bounce.original_message_id == "<m900.0123456789abcdef@gso.gov.vn>"
    assert bounce.action is None


def test_sendmail_plain_bounce_skips_our_own_address() -> None:
    bounce = parse_bounce(SENDMAIL_PLAIN)

    assert bounce.kind is BounceKind.HARD
    assert bounce.recipient == "hoang.e@relay.vn"
    assert bounce.status == "5.1.1"
    assert bounce.diagnostic == "(reason: 550 5.1.1 <hoang.e@relay.vn>... User unknown)"
    assert bounce.verp_token == "m33"


def test_plain_bounce_without_a_failure_code_is_soft() -> None:
    bounce = parse_bounce(PLAIN_SOFT)

    assert bounce.kind is BounceKind.SOFT
    assert bounce.status is None
    assert bounce.diagnostic is None


def test_ordinary_reply_is_no_bounce() -> None:
    with pytest.raises(BounceParseError, match="not a bounce"):
        parse_bounce(NOT_A_BOUNCE)


def test_verp_token_from_the_smtp_envelope_and_custom_prefix() -> None:
    raw = EXCHANGE_NDR.replace(b"To: <tongdieutra@gso.gov.vn>", b"To: <tongdieutra@gso.gov.vn>")

    assert parse_bounce(raw, envelope_rcpt="bounce+m77@gso.gov.vn").verp_token == "m77"
    assert parse_bounce(POSTFIX_DSN, verp_local_prefix="rtn-").verp_token is None
    custom = POSTFIX_DSN.replace(b"bounce+m1042@", b"rtn-m1042@")
    assert parse_bounce(custom, verp_local_prefix="rtn-").verp_token == "m1042"


def test_bounce_of_a_message_we_built_maps_back_to_it() -> None:
    builder = MessageBuilder("Tổng cục Thống kê <tongdieutra@gso.gov.vn>", verp=True)
    built = builder.build("ghost@thudo.vn", EmailTemplateParts("Mật khẩu", "x", "<p>x</p>"), message_key="c7-m123")
    dsn = (
        b"From: MAILER-DAEMON@mx.thudo.vn\r\nTo: " + built.envelope_from.encode() + b"\r\n"
        b"Subject: Undelivered Mail Returned to Sender\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="X"\r\n\r\n'
        b"--X\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.thudo.vn\r\n\r\n"
        b"Final-Recipient: rfc822; ghost@thudo.vn\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n"
        b"--X\r\nContent-Type: message/rfc822\r\n\r\n" + built.data + b"\r\n--X--\r\n"
    )

    bounce = parse_bounce(dsn)

    assert bounce.verp_token == "c7-m123"
    assert bounce.original_message_id == built.message_id
    assert bounce.original_message_id is not None
    assert message_key_from_message_id(bounce.original_message_id) == "c7-m123"
    assert (bounce.kind, bounce.recipient) == (BounceKind.HARD, "ghost@thudo.vn")


def test_base64_encoded_delivery_status_is_read() -> None:
    report = b"Reporting-MTA: dns; mx.vn\r\n\r\nFinal-Recipient: rfc822; x@y.vn\r\nAction: failed\r\nStatus: 5.2.2\r\n"
    dsn = (
        b"From: postmaster@y.vn\r\nTo: bounce+k1@gso.gov.vn\r\n"
        b"Subject: Undeliverable\r\nMIME-Version: 1.0\r\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="Z"\r\n\r\n'
        b"--Z\r\nContent-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        + base64.encodebytes(report)
        + b"--Z--\r\n"
    )

    bounce = parse_bounce(dsn)

    assert (bounce.kind, bounce.status, bounce.recipient) == (BounceKind.HARD, "5.2.2", "x@y.vn")
