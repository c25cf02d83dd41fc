"""`loa demo`: the embedded stack with the built-in SMSC and SMTP simulators, a wave-1 census SMS
campaign to synthetic Vietnamese numbers across carriers and a per-unit credential email
campaign, driven through the real HTTP API, with progress bars and a delivery report."""

from __future__ import annotations

import csv
import io
import random
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from accounts.models import Role
from accounts.service import create_key, get_or_create_org
from loa.db import make_engine, transaction
from loa.settings import Settings
from loa.stack import Stack, free_port

# Mobile prefixes (after the leading 0) by carrier, as in the 2018+ numbering plan.
PREFIXES = {
    "Viettel": ["86", "96", "97", "98", "32", "33", "34", "35", "36", "37", "38", "39"],
    "Vinaphone": ["88", "91", "94", "81", "82", "83", "84", "85"],
    "MobiFone": ["90", "93", "70", "76", "77", "78", "79"],
    "Vietnamobile": ["92", "56", "58"],
}
PROVINCES = [
    "Hà Nội",
    "Hải Phòng",
    "Đà Nẵng",
    "Thừa Thiên Huế",
    "Cần Thơ",
    "Nghệ An",
    "Quảng Ninh",
    "Đắk Lắk",
    "Lâm Đồng",
    "Bà Rịa - Vũng Tàu",
    "Thành phố Hồ Chí Minh",
    "Điện Biên",
]
FAMILY = ["Nguyễn", "Trần", "Lê", "Phạm", "Hoàng", "Huỳnh", "Phan", "Vũ", "Võ", "Đặng", "Bùi", "Đỗ"]
GIVEN = ["Văn An", "Thị Bình", "Minh Châu", "Quốc Dũng", "Thu Hà", "Đức Huy", "Ngọc Lan", "Thanh Tùng", "Hữu Phước"]
UNIT_KIND = ["Công ty TNHH", "Công ty Cổ phần", "Hợp tác xã", "Hộ kinh doanh", "Doanh nghiệp tư nhân"]
UNIT_NAME = [
    "Thương mại Sông Hồng",
    "Dịch vụ Bến Thành",
    "Nông sản Tây Nguyên",
    "Thủy sản Cà Mau",
    "Cơ khí Đông Anh",
    "Du lịch Hạ Long",
    "Dệt may Nam Định",
    "Cà phê Buôn Ma Thuột",
]

SMS_TEMPLATE = (
    "Kính gửi {{ ten }}: Tổng điều tra kinh tế năm 2026 bắt đầu từ ngày 01/12. "
    "Điều tra viên tại {{ tinh }} sẽ liên hệ với quý vị.{{ ghi_chu }} Xin cảm ơn! - Tổng cục Thống kê"
)
EMAIL_SUBJECT = "Tài khoản khai báo Tổng điều tra kinh tế 2026 - {{ don_vi }}"
EMAIL_HTML = (
    "<p>Kính gửi <b>{{ don_vi }}</b>,</p>"
    "<p>Đơn vị được cấp tài khoản khai báo trực tuyến Tổng điều tra kinh tế 2026:</p>"
    "<ul><li>Tên đăng nhập: <b>{{ username }}</b></li><li>Mật khẩu: <b>{{ password }}</b></li></ul>"
    "<p>Vui lòng đổi mật khẩu sau lần đăng nhập đầu tiên.</p><p>Tổng cục Thống kê</p>"
)


def synthetic_numbers(count: int, rng: random.Random) -> list[tuple[str, str]]:
    """(number as people write it, carrier by prefix); unique."""
    carriers = list(PREFIXES)
    seen: set[str] = set()
    out: list[tuple[str, str]] = []
    while len(out) < count:
        carrier = carriers[len(out) % len(carriers)] if len(out) % 5 else "Viettel"
        digits = rng.choice(PREFIXES[carrier]) + f"{rng.randrange(10**7):07d}"
        if digits in seen:
            continue
        seen.add(digits)
        style = len(out) % 4
        shown = {0: "0" + digits, 1: f"0{digits[:3]} {digits[3:6]} {digits[6:]}", 2: "84" + digits, 3: "+84" + digits}[
            style
        ]
        out.append((shown, carrier))
    return out


def sms_csv(count: int, rng: random.Random) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["phone", "ten", "tinh", "ghi_chu"])
    for i, (number, _carrier) in enumerate(synthetic_numbers(count, rng)):
        note = (
            (
                " Quý vị có thể trả lời trực tuyến tại điều tra kinh tế trang web chính thức hoặc gọi tổng đài "
                "miễn phí 1800 1234 để được hỗ trợ."
            )
            if i % 10 == 0
            else ""
        )
        writer.writerow([number, f"{rng.choice(FAMILY)} {rng.choice(GIVEN)}", rng.choice(PROVINCES), note])
    return buf.getvalue().encode("utf-8-sig")


def email_units(count: int, rng: random.Random) -> list[dict[str, Any]]:
    units = []
    for i in range(count):
        name = f"{rng.choice(UNIT_KIND)} {rng.choice(UNIT_NAME)} {i + 1:03d}"
        units.append(
            {
                "to": f"unit{i + 1:05d}@dn{i % 7}.example.vn",
                "fields": {"don_vi": name, "username": f"DN{2026_00000 + i + 1}", "password": secrets.token_urlsafe(9)},
            }
        )
    return units


class DemoError(Exception):
    pass


def _check(resp: httpx.Response) -> Any:
    if resp.status_code >= 400:
        raise DemoError(f"{resp.request.method} {resp.request.url.path}: {resp.status_code} {resp.text[:300]}")
    return resp.json()


def run_demo(settings: Settings, *, sms_count: int, email_count: int, timeout: float) -> int:
    console = Console(stderr=True)
    rng = random.Random(2026)
    stack = Stack(settings, api_port=free_port(), quiet=True)
    try:
        with console.status("Starting embedded Redis, database, simulators, API, workers, scheduler…"):
            stack.prepare()
            engine = make_engine(settings.effective_database_url)
            with transaction(engine) as session:
                key = create_key(session, get_or_create_org(session, "demo"), Role.SENDER, "loa demo").key
            engine.dispose()
            stack.start_services()
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{stack.api_port}", timeout=120, headers={"Authorization": f"Bearer {key}"}
        )
        ids = _create_campaigns(client, console, rng, sms_count, email_count)
        finished = _watch(client, console, ids, timeout)
        ok = _report(client, console, ids, stack.smtp_stats_file)
        if not finished:
            console.print(f"[red]Campaigns did not finish within {timeout:.0f}s; logs in {stack.state_dir / 'logs'}")
            return 1
        return 0 if ok else 1
    except DemoError as exc:
        console.print(f"[red]demo failed:[/] {exc}")
        return 1
    finally:
        with console.status("Stopping…"):
            stack.stop()


def _create_campaigns(
    client: httpx.Client, console: Console, rng: random.Random, sms_count: int, email_count: int
) -> dict[str, str]:
    sms = _check(
        client.post(
            "/v1/campaigns",
            json={
                "name": "Tổng điều tra kinh tế 2026 - đợt 1 (SMS)",
                "channel": "sms",
                "sender": "TCTK",
                "template": {"body": SMS_TEMPLATE},
                "encoding": "auto",
                "priority": "normal",
            },
        )
    )
    up = _check(
        client.post(
            f"/v1/campaigns/{sms['id']}/recipients", files={"file": ("wave1.csv", sms_csv(sms_count, rng), "text/csv")}
        )
    )
    console.print(f"SMS wave 1: {up['accepted']} recipients accepted ({up['rejected']} rejected)")
    preview = _check(client.get(f"/v1/campaigns/{sms['id']}/preview"))
    console.print(
        f"  encoding {preview['encoding']}, {preview['totals']['segments']} segments for "
        f"{preview['totals']['messages']} messages"
    )
    email = _check(
        client.post(
            "/v1/campaigns",
            json={
                "name": "Tài khoản khai báo TĐT kinh tế 2026 (email)",
                "channel": "email",
                "sender": "Tổng cục Thống kê <dieutra@gso.gov.vn>",
                "template": {"subject": EMAIL_SUBJECT, "html": EMAIL_HTML},
                "secret_fields": ["password"],
            },
        )
    )
    up = _check(
        client.post(f"/v1/campaigns/{email['id']}/recipients", json={"recipients": email_units(email_count, rng)})
    )
    console.print(f"Credential email: {up['accepted']} units accepted")
    for cid in (sms["id"], email["id"]):
        _check(client.post(f"/v1/campaigns/{cid}/launch"))
    return {"SMS": sms["id"], "Email": email["id"]}


def _watch(client: httpx.Client, console: Console, ids: dict[str, str], timeout: float) -> bool:
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
    )
    deadline = time.monotonic() + timeout
    with Progress(*columns, console=console) as progress:
        tasks = {label: progress.add_task(label, total=None, info="") for label in ids}
        while time.monotonic() < deadline:
            done = 0
            for label, cid in ids.items():
                c = _check(client.get(f"/v1/campaigns/{cid}"))
                n = c["counts"]
                final = n["total"] - n["queued"] - n["dispatching"] - (n["sent"] if label == "SMS" else 0)
                info = f"sent {n['sent']}  delivered {n['delivered']}  failed {n['failed']}  [{c['status']}]"
                progress.update(tasks[label], total=n["total"], completed=final, info=info)
                done += c["status"] in ("completed", "failed", "cancelled")
            if done == len(ids):
                return True
            time.sleep(0.5)
    return False


def _report(client: httpx.Client, console: Console, ids: dict[str, str], sink_stats: Path | None) -> bool:
    ok = True
    for label, cid in ids.items():
        c = _check(client.get(f"/v1/campaigns/{cid}"))
        counts = c["counts"]
        table = Table(title=f"{label}: {c['name']} — {c['status']}")
        for col in ("total", "delivered", "sent", "failed", "undeliverable", "bounced", "queued"):
            table.add_column(col, justify="right")
        table.add_row(
            *(str(counts[k]) for k in ("total", "delivered", "sent", "failed", "undeliverable", "bounced", "queued"))
        )
        console.print(table)
        if label == "SMS":
            carriers = Table(title="SMS by carrier")
            for col in ("carrier", "gateway", "total", "delivered", "failed"):
                carriers.add_column(col)
            for carrier, n in sorted(c["stats"]["by_carrier"].items()):
                carriers.add_row(
                    carrier, _gateway_of(client, cid, carrier), str(n["total"]), str(n["delivered"]), str(n["failed"])
                )
            console.print(carriers)
            console.print(f"segments {c['stats']['segments']}, ambiguous resends {c['stats']['ambiguous_resends']}")
            ok &= counts["delivered"] == counts["total"]
        else:
            ok &= counts["sent"] == counts["total"]
            if sink_stats is not None:
                ok &= _check_sink(console, sink_stats, counts["sent"])
    print(
        "demo: all SMS delivered and all emails sent" if ok else "demo: some messages did not arrive", file=sys.stderr
    )
    return ok


def _check_sink(console: Console, stats_file: Path, sent: int) -> bool:
    """The built-in sink's own count must equal the campaign's `sent`: nothing lost, nothing twice."""
    from gateways.smtp.sink import read_stats

    deadline = time.monotonic() + 3.0  # the sink writes its counts twice a second
    while True:
        stats = read_stats(stats_file) or {}
        received = stats.get("received", 0)
        if received == sent or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    match = received == sent
    colour = "green" if match else "red"
    console.print(
        f"[{colour}]SMTP sink received {received} emails on {stats.get('connections', 0)} connections; "
        f"the campaign counts {sent} sent: {'they match' if match else 'MISMATCH'}[/]"
    )
    return match


def _gateway_of(client: httpx.Client, cid: str, carrier: str) -> str:
    """The gateway one of the carrier's messages went through (routing is per carrier here)."""
    page = _check(client.get(f"/v1/campaigns/{cid}/messages", params={"carrier": carrier, "limit": 1}))
    return str(page["items"][0]["gateway"] or "") if page["items"] else ""
