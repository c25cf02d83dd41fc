"""Recipient import through the HTTP API into Postgres: rows per second end to end and the API
process's peak memory.

Run: ``.venv/bin/python -m bench.bench_import [rows] [--xlsx ROWS] [--url postgresql+psycopg://…]``
(default 1,000,000 CSV rows; the database, default ``loa_bench_import`` on 127.0.0.1, is created if
missing and rebuilt by the migrations). A real ``loa api`` (uvicorn) process is started; the file
is posted as multipart by httpx, as a browser or ``curl -F`` would, and the clock runs from the
first byte sent to the answer (parse, validate, COPY and commit included). Peak RSS is the API
process's VmHWM from /proc.

The CSV looks like a census list: a phone column in the forms people type (0912…, 84…, +84 …,
dots, dashes, spaces; 5 % invalid: too short, letters, landlines, pre-2018 11-digit numbers) and
three fields (name, province, household code).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from campaigns import phones
from loa.db import make_engine
from loa.migrate import upgrade

FORMS = ("0{n}", "0{a} {b} {c}", "+84{n}", "+84 {a} {b} {c}", "84{n}", "0{a}.{b}.{c}", "0{a}-{b}-{c}", "{n}")
# Three-digit starts of current VN mobile numbers (the ones phonenumbers calls mobile).
PREFIXES = tuple(sorted(phones._FAST_PREFIXES))
INVALID = ("09{d:07d}", "09{d:06d}12a", "024{d:08d}", "0168{d:07d}", "12345", "0{d:07d}")
SURNAMES = ("Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ")
GIVEN = ("Văn An", "Thị Bình", "Minh Châu", "Quốc Dũng", "Thu Hà", "Đức Huy", "Ngọc Lan", "Thanh Tùng")
PROVINCES = ("Hà Nội", "TP. Hồ Chí Minh", "Đà Nẵng", "Hải Phòng", "Cần Thơ", "Nghệ An", "Thanh Hóa", "Lào Cai")


def write_rows(count: int, first: int = 0) -> list[list[str]]:
    """Rows ``first`` … ``first + count - 1``: every valid number is a different one."""
    rng = random.Random(first)
    rows = []
    for i in range(first, first + count):
        if rng.random() < 0.05:
            phone = rng.choice(INVALID).format(d=rng.randrange(10**6))
        else:
            national = PREFIXES[i % len(PREFIXES)] + f"{i // len(PREFIXES) % 10**6:06d}"
            parts = {"a": national[:3], "b": national[3:6], "c": national[6:]}
            phone = rng.choice(FORMS).format(n=national, **parts)
        name = f"{rng.choice(SURNAMES)} {rng.choice(GIVEN)}"
        rows.append([phone, name, rng.choice(PROVINCES), f"HH{i:08d}"])
    return rows


HEADER = ["phone", "ho_ten", "tinh", "ma_ho"]
APP_NAME = "loa-bench-api"


def make_csv(path: Path, count: int) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for start in range(0, count, 100_000):
            writer.writerows(write_rows(min(100_000, count - start), first=start))


def make_xlsx(path: Path, count: int) -> None:
    import openpyxl

    book = openpyxl.Workbook(write_only=True)
    sheet = book.create_sheet("Danh sách")
    sheet.append(HEADER)
    for row in write_rows(count):
        sheet.append(row)
    book.save(path)


def prepare_database(url: str) -> None:
    parsed = make_url(url)
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        if not conn.scalar(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": parsed.database}):
            conn.execute(text(f'CREATE DATABASE "{parsed.database}"'))
    admin.dispose()
    engine = make_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    upgrade(engine)
    engine.dispose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def backend_cpu(url: str) -> dict[int, float]:
    """CPU seconds of the API's Postgres backends (same machine), by pid."""
    engine = create_engine(url)
    with engine.connect() as conn:
        pids = conn.scalars(text("SELECT pid FROM pg_stat_activity WHERE application_name = :n"), {"n": APP_NAME}).all()
    engine.dispose()
    return {pid: cpu_seconds(pid) for pid in pids if Path(f"/proc/{pid}").exists()}


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def upload(
    client: httpx.Client, campaign: str, path: Path, media_type: str, api_pid: int, url: str
) -> tuple[dict[str, object], float, str]:
    """Post the file; returns the answer, the seconds it took and where the CPU time went."""
    backends, api_cpu, load = backend_cpu(url), cpu_seconds(api_pid), os.getloadavg()[0]
    with path.open("rb") as handle:
        started = time.perf_counter()
        response = client.post(f"/v1/campaigns/{campaign}/recipients", files={"file": (path.name, handle, media_type)})
        elapsed = time.perf_counter() - started
    response.raise_for_status()
    db_cpu = sum(cpu - backends.get(pid, 0.0) for pid, cpu in backend_cpu(url).items())
    api_cpu = cpu_seconds(api_pid) - api_cpu
    load = max(load, os.getloadavg()[0])
    return response.json(), elapsed, f"CPU: API {api_cpu:.1f} s, Postgres {db_cpu:.1f} s; load average {load:.1f}"


def start_api(work: Path, url: str, redis_url: str) -> tuple[subprocess.Popen[bytes], httpx.Client]:
    key = secrets.token_urlsafe(32)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env |= {
        "LOA_DATABASE_URL": url,
        "LOA_REDIS_URL": redis_url,
        "LOA_SECRET_KEY": "bench-secret-key-0123456789",
        "LOA_BOOTSTRAP_ADMIN_KEY": key,
        "LOA_STATE_DIR": str(work / "state"),
    }
    api = subprocess.Popen([sys.executable, "-m", "loa", "api", "--port", str(port)], env=env)
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}, timeout=900)
    for _ in range(300):
        try:
            if client.get("/healthz").status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.1)
    return api, client


def run(label: str, client: httpx.Client, api_pid: int, url: str, path: Path, media_type: str) -> None:
    body = {
        "name": label,
        "channel": "sms",
        "sender": "TCTK",
        "template": {"body": "Kính gửi {{ ho_ten }} ({{ tinh }})"},
    }
    campaign = client.post("/v1/campaigns", json=body).json()["id"]
    result, elapsed, cpu = upload(client, campaign, path, media_type, api_pid, url)
    total = int(str(result["total_rows"]))
    counts = ", ".join(f"{k} {result[k]:,}" for k in ("accepted", "rejected", "duplicates", "suppressed"))
    print(f"{label:<4} {total:,} rows ({path.stat().st_size / 1e6:.1f} MB): {counts}")
    print(
        f"     {elapsed:.2f} s = {total / elapsed:,.0f} rows/s end to end; API peak RSS {peak_rss_mb(api_pid):.0f} MB"
    )
    print(f"     {cpu}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("rows", nargs="?", type=int, default=1_000_000)
    parser.add_argument("--xlsx", type=int, default=0, help="also upload an XLSX with this many rows")
    default_url = "postgresql+psycopg://postgres@127.0.0.1/loa_bench_import"
    parser.add_argument("--url", default=os.environ.get("LOA_BENCH_DATABASE_URL", default_url))
    parser.add_argument("--redis", default=os.environ.get("LOA_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="loa-bench-import-"))
    csv_path = work / "census.csv"
    started = time.perf_counter()
    make_csv(csv_path, args.rows)
    print(f"generated {args.rows:,} CSV rows in {time.perf_counter() - started:.1f} s")
    prepare_database(args.url)
    url = f"{args.url}{'&' if '?' in args.url else '?'}application_name={APP_NAME}"
    api, client = start_api(work, url, args.redis)
    try:
        run("CSV", client, api.pid, url, csv_path, "text/csv")
        if args.xlsx:
            xlsx_path = work / "census.xlsx"
            make_xlsx(xlsx_path, args.xlsx)
            media = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
            run("XLSX", client, api.pid, url, xlsx_path, media)
    finally:
        client.close()
        api.terminate()
        api.wait(20)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
