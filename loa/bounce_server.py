"""`loa bounces`: an aiosmtpd receiver that takes bounce messages (DSNs) and applies each one."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

from aiosmtpd.controller import Controller

from campaigns.bounces import apply_bounce
from loa.db import make_engine, transaction
from loa.errors import LoaError
from loa.settings import Settings

log = logging.getLogger(__name__)


class BounceHandler:
    def __init__(self, settings: Settings) -> None:
        self.engine = make_engine(settings.effective_database_url)

    async def handle_DATA(self, _server: Any, _session: Any, envelope: Any) -> str:  # noqa: N802 (aiosmtpd API)
        raw = envelope.original_content or envelope.content
        try:
            with transaction(self.engine) as session:
                result = apply_bounce(session, raw if isinstance(raw, bytes) else raw.encode())
            log.info("bounce: matched=%s kind=%s", result["matched"], result["kind"])
        except LoaError as exc:
            log.info("not a bounce: %s", exc.message)
        return "250 OK"


def serve_bounces(settings: Settings, host: str, port: int) -> None:
    controller = Controller(BounceHandler(settings), hostname=host, port=port)
    controller.start()
    log.info("bounce receiver on %s:%s", host, port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()
