"""`loa campaign …`: the operator's command line, talking to a running API over HTTP.

    LOA_API_URL=https://loa.example.vn LOA_API_KEY=loa_… loa campaign list
    loa campaign show cmp_1234 --watch
    loa campaign report cmp_1234 -o report.csv      (or report.xlsx)

It needs nothing but the URL and a key (any role): no database, no Redis, no settings file.
Errors from the API are one line on stderr (exit 1); an unreachable API exits 2.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

campaign_app = typer.Typer(help="Campaigns of a running Loa API (LOA_API_URL, LOA_API_KEY).", no_args_is_help=True)

FINISHED = {"completed", "cancelled", "failed"}
FAILED = ("undeliverable", "expired", "rejected", "failed", "bounced")
STATUS_ORDER = (
    "queued",
    "dispatching",
    "sent",
    "delivered",
    "undeliverable",
    "expired",
    "rejected",
    "failed",
    "bounced",
    "cancelled",
    "suppressed",
)
URL_OPTION = typer.Option("http://127.0.0.1:8000", "--api-url", envvar="LOA_API_URL", help="the Loa API")
KEY_OPTION = typer.Option(..., "--api-key", envvar="LOA_API_KEY", help="an API key (any role)", show_default=False)

out = Console()
err = Console(stderr=True)


class ApiFailure(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


@contextmanager
def api_client(url: str, key: str) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {key}", "User-Agent": "loa-cli"}
    try:
        with httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=60) as client:
            yield client
    except ApiFailure as exc:
        err.print(f"loa: {exc}", markup=False, highlight=False)
        raise typer.Exit(exc.code) from None
    except httpx.TransportError as exc:
        err.print(f"loa: cannot reach the API at {url} ({type(exc).__name__}: {exc})", markup=False)
        raise typer.Exit(2) from None


def checked(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json() if response.content and "json" in response.headers.get("content-type", "") else None
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text[:200]
    raise ApiFailure(f"{response.request.method} {response.request.url.path}: {response.status_code} {message}")


def number(n: Any) -> str:
    return f"{int(n or 0):,}"


def progress_of(counts: dict[str, int]) -> tuple[int, int]:
    total = int(counts.get("total", 0))
    pending = sum(int(counts.get(s, 0)) for s in ("queued", "dispatching", "sent"))
    return total - pending, total


# --- list --------------------------------------------------------------------------------------
@campaign_app.command("list")
def list_campaigns(
    status: str | None = typer.Option(None, help="only campaigns with this status"),
    limit: int = typer.Option(50, min=1, max=1000, help="at most this many"),
    api_url: str = URL_OPTION,
    api_key: str = KEY_OPTION,
) -> None:
    """Campaigns, newest first, with their progress."""
    table = Table(title="Campaigns", header_style="bold")
    for name, justify in (
        ("id", "left"),
        ("name", "left"),
        ("channel", "left"),
        ("status", "left"),
        ("done", "right"),
        ("delivered", "right"),
        ("failed", "right"),
        ("total", "right"),
        ("created", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    with api_client(api_url, api_key) as client:
        cursor: str | None = None
        shown = 0
        while shown < limit:
            params: dict[str, Any] = {"limit": min(200, limit - shown)}
            if status:
                params["status"] = status
            if cursor:
                params["cursor"] = cursor
            page = checked(client.get("/v1/campaigns", params=params))
            for c in page["items"]:
                counts = c.get("counts", {})
                done, total = progress_of(counts)
                table.add_row(
                    c["id"],
                    c["name"],
                    c["channel"],
                    c["status"],
                    f"{100 * done // total if total else 0}%",
                    number(counts.get("delivered", 0) + (counts.get("sent", 0) if c["channel"] == "email" else 0)),
                    number(sum(counts.get(s, 0) for s in FAILED)),
                    number(total),
                    (c.get("created_at") or "")[:16].replace("T", " "),
                )
                shown += 1
            cursor = page.get("next_cursor")
            if not cursor:
                break
    out.print(table)


# --- show --------------------------------------------------------------------------------------
def render(campaign: dict[str, Any], counts: dict[str, Any]) -> Group:
    c = counts["counts"]
    done, total = progress_of(c)
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(bar_width=None), TaskProgressColumn())
    bar.add_task(f"{number(done)} / {number(total)} final", total=max(total, 1), completed=done)
    title = f"{campaign['name']}  [{campaign['status']}]" + (
        "  (outside its send window)" if campaign.get("waiting_for_window") else ""
    )
    statuses = Table(title="By status", header_style="bold")
    statuses.add_column("status")
    statuses.add_column("messages", justify="right")
    for s in STATUS_ORDER:
        if c.get(s):
            statuses.add_row(s, number(c[s]))
    statuses.add_row("[bold]total", f"[bold]{number(c['total'])}")
    parts: list[Any] = [Panel(bar, title=title, subtitle=campaign["id"]), statuses]
    for label, groups in (("By carrier", counts["by_carrier"]), ("By gateway", counts["by_gateway"])):
        if groups:
            parts.append(_groups_table(label, groups))
    for field, groups in counts.get("by_field", {}).items():
        parts.append(_groups_table(f"By {field}", groups))
    if counts["by_error"]:
        errors = Table(title="Errors", header_style="bold")
        errors.add_column("code")
        errors.add_column("messages", justify="right")
        for code, n in counts["by_error"].items():
            errors.add_row(code, number(n))
        parts.append(errors)
    stats = f"segments {number(counts['segments'])} · ambiguous resends {number(counts['ambiguous_resends'])}"
    stats += f" · no receipt {number(counts['no_receipt'])}"
    parts.append(stats)
    return Group(*parts)


def _groups_table(title: str, groups: dict[str, dict[str, int]]) -> Table:
    used = [s for s in STATUS_ORDER if any(g.get(s) for g in groups.values())]
    table = Table(title=title, header_style="bold")
    table.add_column("")
    for s in ["total", *used]:
        table.add_column(s, justify="right")
    for key, g in groups.items():
        table.add_row(key or "-", *(number(g.get(s, 0)) for s in ["total", *used]))
    return table


@campaign_app.command("show")
def show(
    campaign_id: str,
    watch: bool = typer.Option(False, "--watch", "-w", help="keep refreshing until the campaign ends (Ctrl-C stops)"),
    interval: float = typer.Option(2.0, min=0.5, help="seconds between refreshes with --watch"),
    api_url: str = URL_OPTION,
    api_key: str = KEY_OPTION,
) -> None:
    """A campaign's counts by status, carrier, gateway and error, with a progress bar."""
    with api_client(api_url, api_key) as client:

        def fetch() -> tuple[dict[str, Any], dict[str, Any]]:
            campaign = checked(client.get(f"/v1/campaigns/{campaign_id}"))
            return campaign, checked(client.get(f"/v1/campaigns/{campaign_id}/counts"))

        campaign, counts = fetch()
        if not watch:
            out.print(render(campaign, counts))
            return
        try:
            with Live(render(campaign, counts), console=out, refresh_per_second=4) as live:
                while campaign["status"] not in FINISHED:
                    time.sleep(interval)
                    campaign, counts = fetch()
                    live.update(render(campaign, counts))
        except KeyboardInterrupt:
            pass


# --- report ------------------------------------------------------------------------------------
@campaign_app.command("report")
def report(
    campaign_id: str,
    output: Path = typer.Option(..., "-o", "--output", help="FILE.csv or FILE.xlsx", dir_okay=False),
    api_url: str = URL_OPTION,
    api_key: str = KEY_OPTION,
) -> None:
    """Download the delivery report (CSV streamed; XLSX written by the server, in the background
    for large campaigns, with a progress bar)."""
    kind = output.suffix.lower().lstrip(".")
    if kind not in ("csv", "xlsx"):
        err.print("loa: the output file must end in .csv or .xlsx")
        raise typer.Exit(2)
    with api_client(api_url, api_key) as client:
        path = f"/v1/campaigns/{campaign_id}/report.{kind}"
        with client.stream("GET", path) as response:
            if response.status_code == 202:
                response.read()
                job = response.json()
            else:
                if not response.is_success:
                    response.read()
                    checked(response)
                size = _save(response, output)
                job = None
        if job is not None:
            size = _follow_export(client, job, output)
    err.print(f"wrote {output} ({size:,} bytes)")


def _save(response: httpx.Response, output: Path) -> int:
    tmp = output.with_name(output.name + ".part")
    size = 0
    with tmp.open("wb") as fh:
        for chunk in response.iter_bytes():
            fh.write(chunk)
            size += len(chunk)
    tmp.replace(output)
    return size


def _follow_export(client: httpx.Client, job: dict[str, Any], output: Path) -> int:
    with Progress(
        TextColumn("[bold]exporting"), BarColumn(), TaskProgressColumn(), TextColumn("{task.description}"), console=err
    ) as bar:
        task = bar.add_task("", total=max(1, job["progress"]["rows_total"]))
        while job["status"] in ("pending", "running"):
            time.sleep(1.0)
            job = checked(client.get(f"/v1/exports/{job['id']}"))
            p = job["progress"]
            bar.update(task, completed=p["rows_done"], description=f"{p['rows_done']:,} rows")
    if job["status"] != "done":
        raise ApiFailure(f"export {job['id']} {job['status']}: {job.get('error') or 'no reason given'}")
    with client.stream("GET", job["download_url"]) as response:
        if not response.is_success:
            response.read()
            checked(response)
        return _save(response, output)
