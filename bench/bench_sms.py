"""End-to-end SMS throughput against a raw smpplib send loop, in the same run, to the same SMSC.

One gateway, one bind, window 10, simulator TPS unlimited, on Postgres. The raw loop is smpplib's
`Client` sending submit_sm with up to `window` outstanding and acknowledging every deliver_sm,
nothing else. The end-to-end figure runs the real service: a seeded campaign is launched and
`loa worker` processes (one SMS worker holding the bind, one for dispatch and receipts, plus the
scheduler) send it; it is the time from launch until every submit response is recorded in the
database (no message queued or dispatching). Both run with receipts on, then with receipts off.

    .venv/bin/python -m bench.bench_sms [--messages 20000] [--receipts both|on|off] [--wire]
        [--rounds 1] [--database-url URL] [--redis-url URL]

`--rounds N` repeats the raw loop and the end-to-end run N times per receipts mode and ends with
the medians. On a shared virtual machine the raw loop, bound by the round trip between two
processes, has moved by 2x within minutes while the end-to-end run moved by ±15 %, so the ratio
of a single round says little.

`--wire` also times Loa's session layer alone (`GatewaySessions.send` with the limiter and the send
journal in Redis, no database), to split the gap between the raw loop and the end-to-end figure.

The database named in the URL must exist; its schema is dropped and rebuilt.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import redis
import smpplib.client

from bench.bench_sms_kit import (
    DEFAULT_DB,
    DEFAULT_REDIS,
    SimAccount,
    Stack,
    celery_app,
    fresh_schema,
    kick_dispatch,
    launch,
    machine,
    pending,
    seed_campaign,
    simulator_process,
    smpp_gateway_toml,
    stack_env,
    status_counts,
    wait_bound,
)

GATEWAY = "bench"
WINDOW = 10
TEXT = "Tong dieu tra kinh te 2026, ma so {}"


def raw_loop(port: int, n: int, window: int) -> float:
    """smpplib alone: submit with `window` outstanding, ack receipts; returns messages per second."""
    client = smpplib.client.Client("127.0.0.1", port, allow_unknown_opt_params=True)
    client.connect()
    client.bind_transceiver(system_id=GATEWAY, password=f"{GATEWAY}-pw")
    done = 0

    def sent(pdu: object) -> None:
        nonlocal done
        done += 1

    client.set_message_sent_handler(sent)
    client.set_message_received_handler(lambda pdu: None)
    submitted = 0
    start = time.perf_counter()
    while done < n:
        while submitted < n and submitted - done < window:
            client.send_message(
                source_addr_ton=5,
                source_addr_npi=0,
                source_addr="TCTK",
                dest_addr_ton=1,
                dest_addr_npi=1,
                destination_addr=f"8496{submitted:07d}",
                short_message=TEXT.format(submitted).encode(),
                data_coding=0,
                registered_delivery=1,
            )
            submitted += 1
        client.read_once()
    elapsed = time.perf_counter() - start
    # Drain receipts for a moment so the SMSC is not left retrying them into the next phase.
    client._socket.settimeout(0.5)  # noqa: SLF001 - a bench, not production code
    try:
        while True:
            client.read_once(auto_send_enquire_link=False)
    except Exception:  # the timeout ends the drain
        pass
    client.disconnect()
    return n / elapsed


def wire_only(port: int, n: int, redis_url: str, workdir: Path) -> float:
    """Loa's session layer alone (GatewaySessions.send: pacing, journal, window), no database."""
    from gateways.smpp.client import Deliver, Submit
    from loa.settings import Settings
    from workers.runtime import Runtime
    from workers.smpp_runtime import GatewaySessions
    from workers.sms_journal import Intents, SendJournal

    gateways = workdir / "wire.toml"
    gateways.write_text(smpp_gateway_toml(GATEWAY, port, binds=1, tps=1_000_000, window=WINDOW, carriers=["Viettel"]))
    settings = Settings(
        database_url=f"sqlite:///{workdir / 'unused.db'}",
        redis_url=redis_url,
        secret_key="bench-secret-key-0123456789",
        gateways_file=gateways,
        state_dir=workdir / "wire-state",
    )

    class Sessions(GatewaySessions):
        def _deliver(self, delivers: Sequence[Deliver]) -> None:
            pass  # receipts acknowledged without a database, as the raw loop does

    rt = Runtime(settings)
    journal = SendJournal(rt.redis, 600)
    sessions = Sessions(rt.gateways.smpp[0], rt, lambda _g, _c: None, lambda: None, "bench-wire", journal)
    sessions.start()
    try:
        if not sessions.wait_bound(30):
            raise RuntimeError("the wire-only session did not bind")
        messages = [[Submit((i, 0), "TCTK", f"8496{i:07d}", TEXT.format(i).encode(), data_coding=0)] for i in range(n)]
        key = f"loa:sms:jr:{GATEWAY}:wire"
        journal.open(key)
        intents = Intents(journal, key, ["loa:bench:halt"])

        def intend(indexes: list[int], following: list[int]) -> None:
            intents.before(indexes, following)  # as a send task does before each group (ids: indexes here)

        start = time.perf_counter()
        sessions.send(
            messages,
            [(f"smpp:{GATEWAY}", 1_000_000.0)],
            on_result=lambda i, j, r: journal.accepted(key, i, j, 1, r.provider_id or ""),
            before_group=intend,
        )
        return n / (time.perf_counter() - start)
    finally:
        sessions.stop()
        journal.close()


def end_to_end(port: int, n: int, db_url: str, redis_url: str, workdir: Path) -> tuple[float, dict[str, int]]:
    engine = fresh_schema(db_url)
    redis.Redis.from_url(redis_url).flushdb()
    gateways = workdir / "gateways.toml"
    gateways.write_text(
        smpp_gateway_toml(GATEWAY, port, binds=1, tps=1_000_000, window=WINDOW, carriers=["Viettel"])
        + "default = true\n"
    )
    campaign_id = seed_campaign(engine, n)
    stack = Stack(stack_env(db_url, redis_url, gateways, workdir / "state"), workdir)
    try:
        stack.start("worker", "-Q", "sms", "-c", "4", name="sms")
        stack.start("worker", "-Q", "dispatch,receipts", "-c", "4", name="dispatch")
        stack.start("scheduler", name="scheduler")
        wait_bound(redis_url, GATEWAY, 1)
        celery_app(redis_url)
        start = time.perf_counter()
        launch(engine, campaign_id)
        kick_dispatch(redis_url)
        while pending(engine, campaign_id):
            time.sleep(0.05)
        elapsed = time.perf_counter() - start
        time.sleep(2.0)  # let the receipts land, for the status line
        return n / elapsed, status_counts(engine, campaign_id)
    finally:
        stack.stop()
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--receipts", choices=("both", "on", "off"), default="both")
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    parser.add_argument("--keep", type=Path, help="keep the workers' logs in this directory")
    parser.add_argument("--wire", action="store_true", help="also time Loa's session layer alone (no database)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per receipts mode, then the medians")
    args = parser.parse_args()
    print(f"machine: {machine()}; {args.messages} messages, one bind, window {WINDOW}")
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.receipts]
    for receipts in modes:
        label = "on " if receipts else "off"
        rounds: list[tuple[float, float]] = []
        for _ in range(args.rounds):
            with simulator_process([SimAccount(GATEWAY, f"{GATEWAY}-pw")], receipts=receipts) as port:
                raw = raw_loop(port, args.messages, WINDOW)
                with tempfile.TemporaryDirectory(prefix="loa-bench-") as tmp:
                    workdir = Path(tmp) if args.keep is None else args.keep
                    workdir.mkdir(parents=True, exist_ok=True)
                    wire = wire_only(port, args.messages, args.redis_url, workdir) if args.wire else None
                    e2e, counts = end_to_end(port, args.messages, args.database_url, args.redis_url, workdir)
            rounds.append((raw, e2e))
            wire_text = f" | sessions alone {wire:,.0f} msg/s ({wire / raw:.2f})" if wire else ""
            print(
                f"receipts {label}: raw smpplib {raw:,.0f} msg/s{wire_text} | end-to-end {e2e:,.0f} msg/s | "
                f"ratio {e2e / raw:.2f} | statuses {counts}",
                flush=True,
            )
        if len(rounds) > 1:
            raws, e2es = [r for r, _ in rounds], [e for _, e in rounds]
            print(
                f"receipts {label}: median of {len(rounds)} rounds: raw smpplib {median(raws):,.0f} msg/s | "
                f"end-to-end {median(e2es):,.0f} msg/s | ratio {median(e / r for r, e in rounds):.2f} "
                f"(ratio of the medians {median(e2es) / median(raws):.2f})"
            )


if __name__ == "__main__":
    main()
