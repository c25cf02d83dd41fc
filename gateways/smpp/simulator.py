"""The built-in SMSC simulator: a real SMPP 3.4 server over TCP, on asyncio.

It serves the demo (``loa simulate smsc``, ``loa run``, ``loa demo``), the test suite (fault
injection: throttling, dropped connections, unanswered submits, generic_nack, SMSC-initiated
unbind, early and duplicate receipts, hex/decimal ids) and the benchmarks. This module is the
public face; the parts live beside it:

- :mod:`gateways.smpp.pdu` — the wire codec (the simulator never imports smpplib);
- :mod:`gateways.smpp.sim_config` — :class:`Account`, :class:`SimulatorConfig`, :func:`demo_config`;
- :mod:`gateways.smpp.sim_stats` — :class:`SmscStats`, :class:`SubmitRecord`;
- :mod:`gateways.smpp.sim_accounts` — bind checks and the per-account TPS cap;
- :mod:`gateways.smpp.sim_session` — one protocol instance per TCP connection;
- :mod:`gateways.smpp.sim_delivery` — routing receipts and MO messages to bound receivers;
- :mod:`gateways.smpp.sim_receipts` — message ids and receipt / MO bodies.

Typical use in a test::

    with run_in_thread(SimulatorConfig(port=0)) as smsc:
        client = smpplib.client.Client("127.0.0.1", smsc.port, allow_unknown_opt_params=True)
        ...
        assert smsc.stats.submits == 1
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
import signal
import threading
from collections.abc import Iterator

from gateways.smpp.sim_accounts import TpsGate
from gateways.smpp.sim_config import Account, SimulatorConfig, demo_config
from gateways.smpp.sim_delivery import DeliveryRouter, Outbound
from gateways.smpp.sim_receipts import mo_body
from gateways.smpp.sim_session import SmppSession
from gateways.smpp.sim_stats import SmscStats, SubmitRecord

__all__ = [
    "Account",
    "SimulatorConfig",
    "Smsc",
    "SmscStats",
    "SubmitRecord",
    "demo_config",
    "run_in_thread",
    "serve",
]

logger = logging.getLogger(__name__)

_THREAD_TIMEOUT_S = 10.0


class Smsc:
    """One simulated SMSC listening on ``config.host:config.port``.

    ``config`` may be changed (or replaced) while running; every PDU reads it afresh. ``stats``
    may be read from any thread. ``port`` is the real port once :meth:`start` returned.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.stats = SmscStats()
        self.tps_gate = TpsGate()
        self.port = config.port
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._router: DeliveryRouter | None = None
        self._sessions: set[SmppSession] = set()
        # Ids stay unique for this object's lifetime; the random start (up to 10 hex digits) makes
        # a restarted simulator unlikely to reissue an id an ESME still has on file.
        self._numbers = itertools.count(random.randrange(1 << 32, 1 << 40))

    @property
    def router(self) -> DeliveryRouter:
        if self._router is None:
            raise RuntimeError("the SMSC simulator is not started")
        return self._router

    def next_message_number(self) -> int:
        return next(self._numbers)

    def session_opened(self, session: SmppSession) -> None:
        self._sessions.add(session)

    def session_closed(self, session: SmppSession) -> None:
        self._sessions.discard(session)

    async def start(self) -> None:
        """Listen; returns once the socket is bound (``port`` then holds the real port)."""
        if self._server is not None:
            raise RuntimeError("the SMSC simulator is already started")
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._router = DeliveryRouter(loop)
        self._server = await loop.create_server(
            lambda: SmppSession(self), self.config.host, self.config.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info(
            "SMSC simulator listening on %s:%s (accounts: %s)",
            self.config.host,
            self.port,
            ", ".join(a.system_id for a in self.config.accounts),
        )

    async def stop(self) -> None:
        """Stop listening and close every session (no unbind); queued receipts are dropped."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        self.router.close()
        for session in list(self._sessions):
            session.close()
        await server.wait_closed()
        # Let the transports run connection_lost before the loop may go away. The closed router
        # stays in place: a late connection_lost hands it receipts, which it drops.
        for _ in range(3):
            if not self._sessions:
                break
            await asyncio.sleep(0)
        logger.info("SMSC simulator on port %s stopped", self.port)

    def send_mo(self, system_id: str, source_addr: str, dest: str, text: str) -> None:
        """Deliver a mobile-originated message to a receiver session of ``system_id``.

        Safe to call from any thread. Like receipts, it waits in the account's queue while no
        receiver or transceiver of that account is bound.
        """
        loop = self._loop
        if loop is None or self._server is None:
            raise RuntimeError("the SMSC simulator is not started")
        item = Outbound(system_id, mo_body(source_addr, dest, text), is_receipt=False)
        loop.call_soon_threadsafe(self._send_if_running, item)

    def disconnect(self, system_id: str) -> None:
        """Drop every session of ``system_id`` (TCP close, no unbind), as a carrier outage does.

        Safe to call from any thread; returns once the sessions are closed."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the SMSC simulator is not started")

        async def close() -> None:
            for session in list(self._sessions):
                if session.system_id == system_id:
                    session.close()

        asyncio.run_coroutine_threadsafe(close(), loop).result(_THREAD_TIMEOUT_S)

    def queued(self, system_id: str) -> int:
        """deliver_sm waiting for a receiver of ``system_id`` (a snapshot when read from another thread)."""
        return self.router.queued(system_id)

    def _send_if_running(self, item: Outbound) -> None:
        if self._router is not None:
            self._router.send([item])  # a stopped simulator's router drops it


@contextlib.contextmanager
def run_in_thread(config: SimulatorConfig) -> Iterator[Smsc]:
    """Run a simulator on its own event loop in a daemon thread; yields it started.

    Exiting the block stops the simulator and the thread. Tests and end-to-end tests use this.
    """
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="loa-smsc-simulator", daemon=True)
    thread.start()
    smsc = Smsc(config)
    try:
        asyncio.run_coroutine_threadsafe(smsc.start(), loop).result(_THREAD_TIMEOUT_S)
        yield smsc
    finally:
        try:
            asyncio.run_coroutine_threadsafe(smsc.stop(), loop).result(_THREAD_TIMEOUT_S)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(_THREAD_TIMEOUT_S)
            if not thread.is_alive():
                loop.close()


def serve(config: SimulatorConfig) -> None:
    """Run a simulator until SIGTERM or SIGINT (blocking; ``loa simulate smsc``)."""
    asyncio.run(_serve(config))


async def _serve(config: SimulatorConfig) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):
            # Not the main thread, or no signal support (Windows): Ctrl-C still interrupts.
            pass
    smsc = Smsc(config)
    await smsc.start()
    try:
        await stop.wait()
        logger.info("SMSC simulator shutting down")
    finally:
        await smsc.stop()
        for sig in installed:
            loop.remove_signal_handler(sig)
