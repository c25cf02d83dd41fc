"""Credential email end to end with DKIM against raw aiosmtplib loops, in the same run, to the same
SMTP sink.

The sink is `loa simulate smtp` (aiosmtpd) in its own process, counting what it receives. Every
phase sends the same per-unit credential mail: the demo's Vietnamese HTML template rendered with
Jinja (text part derived from the HTML), DKIM-signed, one recipient per message, over `C`
connections in total:

* raw/loa: one event loop, C coroutines, each with one aiosmtplib connection reused for every
  message; each message rendered, built with Loa's MessageBuilder, signed with Loa's DkimSigner,
  sent. The tightest loop we know how to write: the yardstick for the ratio.
* raw/stdlib: the same loop with the textbook parts: `email.mime` (compat32) and `dkim.sign`
  (dkimpy; ed25519 needs PyNaCl).
* end to end: a credential campaign (passwords encrypted at rest) seeded into Postgres and
  launched; `--workers` `loa worker -Q email,dispatch` processes with `--connections` each
  (C = workers x connections) and the scheduler send it through the whole service: dispatcher,
  Celery on Redis, shared limiter, batch ledger, pool, bulk recording. Timed from launch until the
  sink has counted every message; the database must then say `sent` for all of them.

    .venv/bin/python -m bench.bench_email [--messages 5000] [--algorithm ed25519|rsa|both]
        [--workers 2] [--connections 4] [--rsa-messages 1000] [--database-url URL] [--redis-url URL]

The database named in the URL must exist; its schema is dropped and rebuilt.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.header import Header
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import formataddr, formatdate, make_msgid
from pathlib import Path

import aiosmtplib
import redis
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from sqlalchemy import Engine, insert, text

from accounts.service import get_or_create_org
from bench.bench_sms_kit import (
    DEFAULT_DB,
    DEFAULT_REDIS,
    ROOT,
    SECRET,
    Stack,
    free_port,
    fresh_schema,
    kick_dispatch,
    launch,
    machine,
    stack_env,
    status_counts,
)
from campaigns import counters
from campaigns.models import Campaign, Channel, Message
from campaigns.recipients import secret_aad
from campaigns.templates import render
from gateways.smtp.dkim import DkimSigner
from gateways.smtp.html_text import html_to_text
from gateways.smtp.message import EmailTemplateParts, MessageBuilder
from gateways.smtp.sink import read_stats
from loa.crypto import SecretBox
from loa.db import transaction
from loa.demo import EMAIL_HTML, EMAIL_SUBJECT

SENDER = "Tổng cục Thống kê <dieutra@gso.gov.vn>"
DOMAIN, SELECTOR = "gso.gov.vn", "loa"
TEMPLATE = {"subject": EMAIL_SUBJECT, "html": EMAIL_HTML}
SIGNED = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type"]

Mail = tuple[str, str, bytes]  # envelope sender, recipient, data


def unit(i: int) -> tuple[str, dict[str, str]]:
    fields = {
        "don_vi": f"Công ty TNHH Thương mại Sông Hồng {i:05d}",
        "username": f"DN2026{i:06d}",
        "password": base64.urlsafe_b64encode(i.to_bytes(8, "big") + b"pw").decode()[:12],
    }
    return f"unit{i:06d}@dn{i % 20}.example.vn", fields


def key_pem(algorithm: str) -> bytes:
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    key = ed25519.Ed25519PrivateKey.generate() if algorithm == "ed25519" else rsa.generate_private_key(65537, 2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def loa_maker(pem: bytes) -> Callable[[int], Mail]:
    builder, signer = MessageBuilder(SENDER), DkimSigner(DOMAIN, SELECTOR, pem)

    def make(i: int) -> Mail:
        to, fields = unit(i)
        r = render(TEMPLATE, fields)
        built = builder.build(to, EmailTemplateParts(r.subject or "", r.body, r.html), message_key=str(i))
        return built.envelope_from, built.recipient, signer.sign(built.data)

    return make


def stdlib_maker(pem: bytes, algorithm: str) -> Callable[[int], Mail]:
    import dkim

    key = serialization.load_pem_private_key(pem, password=None)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # dkimpy takes an ed25519 key as the base64 of its raw 32-byte seed, not PKCS#8 PEM.
        raw = key.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )
        dkim_key = base64.b64encode(raw)
    else:
        dkim_key = pem
    name, address = "Tổng cục Thống kê", "dieutra@gso.gov.vn"

    def make(i: int) -> Mail:
        to, fields = unit(i)
        r = render(TEMPLATE, fields)
        msg = MIMEMultipart("alternative")
        msg["From"] = formataddr((str(Header(name, "utf-8")), address))
        msg["To"] = to
        msg["Subject"] = Header(r.subject or "", "utf-8").encode()
        msg["Date"] = formatdate(usegmt=True)
        msg["Message-ID"] = make_msgid(domain=DOMAIN)
        msg.attach(MIMEText(html_to_text(r.html or ""), "plain", "utf-8"))
        msg.attach(MIMEText(r.html or "", "html", "utf-8"))
        data = msg.as_bytes().replace(b"\n", b"\r\n")
        signature = dkim.sign(
            data,
            SELECTOR.encode(),
            DOMAIN.encode(),
            dkim_key,
            canonicalize=(b"relaxed", b"relaxed"),
            include_headers=SIGNED,
            signature_algorithm=f"{algorithm}-sha256".encode(),
            linesep=b"\r\n",
        )
        return address, to, signature + data

    return make


async def raw_loop(port: int, n: int, connections: int, make: Callable[[int], Mail]) -> float:
    """C connections, each reused: render, build, sign, send; returns messages per second."""
    numbers = itertools.count()

    async def one_connection() -> None:
        client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, local_hostname="mail.gso.gov.vn", timeout=60)
        await client.connect()
        while (i := next(numbers)) < n:
            sender, rcpt, data = make(i)
            await client.sendmail(sender, [rcpt], data)
        await client.quit()

    started = time.perf_counter()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return n / (time.perf_counter() - started)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu(engine: Engine) -> dict[int, float]:
    """CPU so far of every server process on this database (the workers' pooled connections)."""
    with engine.connect() as conn:
        pids = conn.execute(text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")).scalars()
        return {int(pid): cpu_seconds(int(pid)) for pid in pids}


def sink_received(stats_file: Path) -> int:
    return (read_stats(stats_file) or {}).get("received", 0)


def wait_received(stats_file: Path, target: int, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sink_received(stats_file) >= target:
            return time.perf_counter()
        time.sleep(0.05)
    raise RuntimeError(f"the sink received {sink_received(stats_file)} of {target} within {timeout:.0f}s")


def seed_credentials(engine: Engine, n: int) -> str:
    box = SecretBox(SECRET)
    with transaction(engine) as session:
        org = get_or_create_org(session, "bench")
        campaign = Campaign(
            org_id=org.id,
            name="bench credentials",
            channel=Channel.EMAIL,
            sender=SENDER,
            template=TEMPLATE,
            secret_fields=["password"],
            fields=["don_vi", "username", "password"],
        )
        session.add(campaign)
        session.flush()
        campaign_id, org_id = campaign.id, org.id
    rows = []
    for i in range(n):
        to, fields = unit(i)
        secret = {"password": fields.pop("password")}
        rows.append(
            {
                "campaign_id": campaign_id,
                "to": to,
                "fields": fields,
                "secrets": box.encrypt_fields(secret, secret_aad(org_id, to)),
            }
        )
    with transaction(engine) as session:
        session.execute(insert(Message), rows)
        counters.reconcile(session, campaign_id)
    return campaign_id


def wait_workers(redis_url: str, count: int, timeout: float) -> None:
    """Until `count` workers answer a ping: start-up is not part of what is measured."""
    from workers.celery_app import app, configure

    configure(redis_url)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(app.control.ping(timeout=1.0)) >= count:
            time.sleep(1.0)  # let them settle (first broker polls, scheduler leadership)
            return
    raise RuntimeError(f"{count} workers did not come up within {timeout:.0f}s")


def per_message(cpu: dict[str, float], n: int) -> str:
    return ", ".join(f"{name} {1000 * seconds / n:.2f}" for name, seconds in cpu.items())


def end_to_end(
    args: argparse.Namespace, algorithm: str, n: int, sink_port: int, sink_pid: int, stats_file: Path, workdir: Path
) -> float:
    engine = fresh_schema(args.database_url)
    redis.Redis.from_url(args.redis_url).flushdb()
    (workdir / "dkim.pem").write_bytes(key_pem(algorithm))
    gateways = workdir / "gateways.toml"
    gateways.write_text(
        f'[[smtp]]\nname = "bench"\nhost = "127.0.0.1"\nport = {sink_port}\nconnections = {args.connections}\n'
        f'rate = 100000\ndomain_rates = {{ "*" = 100000 }}\nlocal_hostname = "mail.gso.gov.vn"\n'
        f'dkim = {{ domain = "{DOMAIN}", selector = "{SELECTOR}", key_file = "dkim.pem" }}\n'
    )
    campaign_id = seed_credentials(engine, n)
    env = stack_env(
        args.database_url,
        args.redis_url,
        gateways,
        workdir / "state",
        LOA_DISPATCH_BATCH=str(args.batch),
        LOA_SCHEDULER_INTERVAL_S="2.0",  # the default
    )
    logs = args.logs or workdir
    logs.mkdir(parents=True, exist_ok=True)
    level = "INFO" if args.logs else "WARNING"
    stack = Stack(env, logs)
    try:
        for i in range(args.workers):
            stack.start("worker", "-Q", "email,dispatch", "-c", str(args.concurrency), "-l", level, name=f"worker{i}")
        stack.start("scheduler", "-l", level, name="scheduler")
        wait_workers(args.redis_url, args.workers, timeout=args.warmup)
        # What the workers and the scheduler burn with nothing to send (broker polling, ticks), so
        # that the work per message can be told apart from it on a busy machine.
        idle_from = sum(cpu_seconds(p.pid) for p in stack.procs)
        time.sleep(3.0)
        idle_rate = (sum(cpu_seconds(p.pid) for p in stack.procs) - idle_from) / 3.0
        before = sink_received(stats_file)
        cpu_before = sum(cpu_seconds(p.pid) for p in stack.procs), cpu_seconds(sink_pid), postgres_cpu(engine)
        started = time.perf_counter()
        launch(engine, campaign_id)
        kick_dispatch(args.redis_url)
        finished = wait_received(stats_file, before + n, timeout=max(120.0, n / 20))
        rate = n / (finished - started)
        pg_after = postgres_cpu(engine)
        cpu = {
            "workers": sum(cpu_seconds(p.pid) for p in stack.procs) - cpu_before[0],
            "postgres": sum(t - cpu_before[2].get(pid, 0.0) for pid, t in pg_after.items()),
            "sink": cpu_seconds(sink_pid) - cpu_before[1],
        }
        cpu["workers minus idle"] = cpu["workers"] - idle_rate * (finished - started)
        print(f"  end to end CPU per message (ms): {per_message(cpu, n)} (idle: {100 * idle_rate:.0f} % of a core)")
        deadline = time.monotonic() + 30
        while status_counts(engine, campaign_id).get("sent", 0) < n and time.monotonic() < deadline:
            time.sleep(0.2)
        counts = status_counts(engine, campaign_id)
        if counts.get("sent") != n or sink_received(stats_file) != before + n:
            raise RuntimeError(f"end to end: database says {counts}, sink {sink_received(stats_file) - before}")
        return rate
    finally:
        stack.stop()
        engine.dispose()


def measured(label: str, n: int, port: int, connections: int, make: Callable[[int], Mail], sink_pid: int) -> float:
    """Run a raw loop in this process and print its rate and CPU per message."""
    cpu_before = cpu_seconds(os.getpid()), cpu_seconds(sink_pid)
    rate = asyncio.run(raw_loop(port, n, connections, make))
    cpu = {"client": cpu_seconds(os.getpid()) - cpu_before[0], "sink": cpu_seconds(sink_pid) - cpu_before[1]}
    print(f"{label}   {n:6d} msgs  {rate:8.0f} msg/s   CPU per message (ms): {per_message(cpu, n)}", flush=True)
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rsa-messages", type=int, default=1000, help="rsa-sha256 runs are slower: fewer messages")
    parser.add_argument("--algorithm", choices=["ed25519", "rsa", "both"], default="both")
    parser.add_argument("--workers", type=int, default=2, help="email worker processes")
    parser.add_argument("--connections", type=int, default=4, help="SMTP connections per worker process")
    parser.add_argument("--concurrency", type=int, default=4, help="Celery threads per worker")
    parser.add_argument("--batch", type=int, default=200, help="LOA_DISPATCH_BATCH")
    parser.add_argument("--warmup", type=float, default=120.0, help="at most this long for the workers to start")
    parser.add_argument("--skip-stdlib", action="store_true", help="skip the email.mime + dkimpy loop")
    parser.add_argument("--logs", type=Path, help="keep the worker logs in this directory (INFO level)")
    parser.add_argument("--database-url", default=DEFAULT_DB)
    parser.add_argument("--redis-url", default=DEFAULT_REDIS)
    args = parser.parse_args()
    total_connections = args.workers * args.connections
    print(f"machine: {machine()}; {args.workers} workers x {args.connections} connections = {total_connections}")
    with tempfile.TemporaryDirectory(prefix="loa-bench-email-") as tmp:
        workdir = Path(tmp)
        stats_file, port = workdir / "sink.json", free_port()
        sink = subprocess.Popen(
            [sys.executable, "-m", "loa", "simulate", "smtp", "--port", str(port), "--stats-file", str(stats_file)],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 30  # the sink writes its stats file once it listens
            while read_stats(stats_file) is None and time.monotonic() < deadline:
                time.sleep(0.1)
            algorithms = ["ed25519", "rsa"] if args.algorithm == "both" else [args.algorithm]
            for algorithm in algorithms:
                n = args.messages if algorithm == "ed25519" else args.rsa_messages
                pem = key_pem(algorithm)
                raw = measured(f"{algorithm}-sha256  raw/loa   ", n, port, total_connections, loa_maker(pem), sink.pid)
                stdlib = None
                if not args.skip_stdlib:
                    maker = stdlib_maker(pem, algorithm)
                    stdlib = measured(f"{algorithm}-sha256  raw/stdlib", n, port, total_connections, maker, sink.pid)
                e2e = end_to_end(args, algorithm, n, port, sink.pid, stats_file, workdir)
                line = (
                    f"{algorithm}-sha256  end to end   {n:6d} msgs  {e2e:8.0f} msg/s   ratio {e2e / raw:.2f} vs raw/loa"
                )
                if stdlib:
                    line += f", {e2e / stdlib:.2f} vs raw/stdlib"
                print(line, flush=True)
        finally:
            sink.terminate()
            sink.wait(20)
    print(f"machine after: {machine()}")


if __name__ == "__main__":
    main()
