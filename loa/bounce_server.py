"""`loa bounces`: a small aiosmtpd receiver for bounce messages (DSNs).

Point the MX (or a transport map) of the VERP domain's ``bounce+*`` addresses at it. Each message
is parsed and applied in its own transaction (see :mod:`campaigns.bounces`): matched to its message
by the VERP token of the envelope recipient or by the original Message-ID, then ``250`` -- also
for mail that is no bounce or matches nothing, so a remote MTA never retries or bounces it back
(which could loop). Only a database failure answers ``451`` so the sender tries again later.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from typing import Any

from aiosmtpd.controller import Controller
from sqlalchemy import Engine

from campaigns.bounces import BounceKeys, apply_bounce
from loa.db import make_engine, transaction
from loa.errors import LoaError
from loa.settings import Settings

log = logging.getLogger(__name__)

MAX_BOUNCE_BYTES = 5 * 1024 * 1024


class BounceHandler:
    """aiosmtpd handler: one bounce per DATA, applied off the event loop."""

    def __init__(self, engine: Engine, keys: BounceKeys) -> None:
        self.engine = engine
        self.keys = keys
        self.applied = 0  # bounces that matched a message (read by tests)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        raw = envelope.original_content or envelope.content or b""
        data = raw if isinstance(raw, bytes) else raw.encode("utf-8", "replace")
        rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else None
        try:
            result = await asyncio.to_thread(self._apply, data, rcpt)
        except LoaError as exc:
            log.info("bounce receiver: ignored a message that is no bounce (%s)", exc.code)
            return "250 2.0.0 OK: not a bounce, ignored"
        except Exception:
            log.exception("bounce receiver: could not apply a bounce")
            return "451 4.3.0 Temporary failure, try again later"
        if result["matched"]:
            self.applied += 1
        log.info(
            "bounce: matched=%s message=%s kind=%s action=%s status=%s applied=%s",
            result["matched"],
            result["message_id"],
            result["kind"],
            result["action"],
            result["status"],
            result["applied"],
        )
        return "250 2.0.0 OK"

    def _apply(self, data: bytes, rcpt: str | None) -> dict[str, Any]:
        with transaction(self.engine) as session:
            return apply_bounce(session, data, self.keys, envelope_rcpt=rcpt)


def make_controller(settings: Settings, host: str, port: int) -> Controller:
    handler = BounceHandler(
        make_engine(settings.effective_database_url), BounceKeys.from_secrets(*settings.secret_keys())
    )
    return Controller(handler, hostname=host, port=port, data_size_limit=MAX_BOUNCE_BYTES)


def serve_bounces(settings: Settings, host: str, port: int) -> None:
    """Run the receiver until SIGTERM/SIGINT."""
    # aiosmtpd logs every SMTP command at INFO; one line per bounce (ours) is enough.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    controller = make_controller(settings, host, port)
    controller.start()
    log.info("bounce receiver listening on %s:%s", host, port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()
    log.info("bounce receiver stopped")
