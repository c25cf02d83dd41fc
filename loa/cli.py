"""The `loa` command line (typer): demo, run, api, worker, scheduler, db, keys, gateways, simulate.

A bad setting or gateways file is one clear line on stderr and exit code 2, never a traceback."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import typer

from loa.cli_ops import campaign_app
from loa.metrics import enable_multiprocess
from loa.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="Loa: bulk SMS and email campaigns.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
gateways_app = typer.Typer(help="Gateways from the gateways file.", no_args_is_help=True)
simulate_app = typer.Typer(help="Built-in simulators.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(gateways_app, name="gateways")
app.add_typer(simulate_app, name="simulate")
app.add_typer(campaign_app, name="campaign")  # loa/cli_ops.py: operators, over the HTTP API

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 2) -> None:
    print(f"loa: {message}", file=sys.stderr)
    raise typer.Exit(code)


def clean_errors(fn: F) -> F:
    """Configuration problems end the command with one line and exit 2."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from gateways.config import GatewaysFileError
        from loa.embedded import EmbeddedRedisError

        try:
            return fn(*args, **kwargs)
        except (SettingsError, GatewaysFileError, EmbeddedRedisError) as exc:
            fail(str(exc))

    return wrapper  # type: ignore[return-value]


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def settings_with_redis() -> Settings:
    """Standalone parts use LOA_REDIS_URL, or the embedded socket when `loa run` has it up."""
    from loa.embedded import standalone_redis_url

    settings = load_settings()
    if not settings.redis_url:
        url = standalone_redis_url(settings.state_dir)
        if url is None:
            raise SettingsError("LOA_REDIS_URL: not set and no embedded Redis is running (set it, or start `loa run`)")
        settings = settings.model_copy(update={"redis_url": url})
        os.environ["LOA_REDIS_URL"] = url
    return settings


# --- the whole thing -------------------------------------------------------------------------
@app.command()
@clean_errors
def demo(
    sms: int = typer.Option(2000, help="SMS recipients"),
    email: int = typer.Option(500, help="email units"),
    timeout: float = typer.Option(600, help="seconds to wait for both campaigns"),
) -> None:
    """Embedded stack + simulators; a census SMS wave and a credential email campaign, with a report."""
    from loa.demo import run_demo

    raise typer.Exit(run_demo(load_settings(), sms_count=sms, email_count=email, timeout=timeout))


@app.command()
@clean_errors
def run(port: int | None = typer.Option(None, help="API port (default LOA_API_PORT)")) -> None:
    """API + workers for every queue + scheduler (+ simulators when no gateways file)."""
    from loa.stack import Stack

    settings = load_settings()
    stack = Stack(settings, api_port=port)
    stack.catch_signals()
    try:
        stack.prepare()
        stack.start_services()
    except BaseException:
        stack.stop()
        raise
    print(f"Loa is running: API http://{settings.api_host}:{stack.api_port}  (Ctrl-C stops)", file=sys.stderr)
    raise typer.Exit(stack.wait())


# --- the parts one by one --------------------------------------------------------------------
@app.command()
@clean_errors
def api(host: str | None = None, port: int | None = None) -> None:
    """The HTTP API (and dashboard)."""
    import uvicorn

    from accounts.service import ensure_key
    from api.app import create_app
    from loa.db import make_engine, transaction

    settings = settings_with_redis()
    setup_logging("WARNING")
    enable_multiprocess(settings)  # /metrics sums this process and the workers (loa/metrics.py)
    if settings.bootstrap_admin_key is not None:
        with transaction(make_engine(settings.effective_database_url)) as session:
            ensure_key(session, settings.bootstrap_admin_key.get_secret_value())
    uvicorn.run(
        create_app(settings),
        host=host or settings.api_host,
        port=port or settings.api_port,
        log_level="warning",
        access_log=False,
    )


@app.command()
@clean_errors
def worker(
    queues: str | None = typer.Option(None, "-Q", "--roles", help="roles: dispatch,sms,email,receipts (default all)"),
    concurrency: int = typer.Option(8, "-c", "--concurrency", help="threads"),
    name: str | None = typer.Option(None, "-n", "--hostname", help="worker name"),
    loglevel: str = typer.Option("INFO", "-l", "--loglevel"),
) -> None:
    """A Celery worker for the given roles (threads pool: SMPP sessions live as long as the worker)."""
    from workers.boot import install_gc_tuning, install_sms_boot
    from workers.celery_app import configure
    from workers.queues import Role, parse_roles, queues_for_roles
    from workers.runtime import gateways_for

    settings = settings_with_redis()
    enable_multiprocess(settings)
    try:
        roles = parse_roles(queues)
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    gateways = gateways_for(settings)
    plain = queues_for_roles([r for r in roles if r is not Role.SMS], gateways)
    sms_gateways = [g.name for g in gateways.smpp] if Role.SMS in roles else []
    configure(settings.redis_url or "")
    install_sms_boot(sms_gateways)
    install_gc_tuning()
    setup_logging(loglevel)
    # SMS queues are consumed only while this worker holds a bind lease (see workers/boot.py).
    hostname = name or f"loa-{'-'.join(r.value for r in roles)}-{os.getpid()}@{socket.gethostname()}"
    from workers.celery_app import app as celery_app

    celery_app.worker_main(
        [
            "worker",
            "-Q",
            ",".join(plain or ["sms.idle"]),
            "-P",
            "threads",
            "-c",
            str(concurrency),
            "-n",
            hostname,
            "-l",
            loglevel,
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
        ]
    )


@app.command()
@clean_errors
def scheduler(loglevel: str = typer.Option("INFO", "-l", "--loglevel")) -> None:
    """Celery beat: the tick that starts, windows, expires, sweeps and dispatches."""
    from workers.celery_app import app as celery_app
    from workers.celery_app import configure

    settings = settings_with_redis()
    configure(settings.redis_url or "", tick_interval_s=settings.scheduler_interval_s)
    setup_logging(loglevel)
    state = settings.state_dir.resolve()
    state.mkdir(parents=True, exist_ok=True)
    celery_app.start(["beat", "-l", loglevel, "-s", str(state / "celerybeat-schedule"), "--pidfile="])


@db_app.command("upgrade")
@clean_errors
def db_upgrade(revision: str = "head") -> None:
    """Alembic upgrade to head."""
    from loa.db import make_engine
    from loa.migrate import upgrade

    settings = load_settings()
    upgrade(make_engine(settings.effective_database_url), revision)
    print(f"database at {revision}: {_safe_url(settings.effective_database_url)}", file=sys.stderr)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine.url import make_url

    return make_url(url).render_as_string(hide_password=True)


# --- keys ------------------------------------------------------------------------------------
@keys_app.command("create")
@clean_errors
def keys_create(
    org: str = typer.Option(..., "--org"),
    role: str = typer.Option(..., "--role"),
    name: str = typer.Option("", "--name"),
) -> None:
    """Print a new key alone on stdout (details on stderr), once."""
    from accounts.models import Role
    from accounts.service import create_key, get_or_create_org
    from loa.db import make_engine, transaction
    from loa.migrate import upgrade

    try:
        role_value = Role(role)
    except ValueError:
        fail(f"--role must be admin, sender or operator (got {role!r})")
        return
    settings = load_settings()
    engine = make_engine(settings.effective_database_url)
    upgrade(engine)
    with transaction(engine) as session:
        issued = create_key(session, get_or_create_org(session, org), role_value, name)
        record = issued.record
    print(issued.key)
    print(f"key {record.id} ({role_value.value}) for organisation {org!r}: shown once, store it now", file=sys.stderr)


@keys_app.command("list")
@clean_errors
def keys_list() -> None:
    from rich.console import Console
    from rich.table import Table
    from sqlalchemy import select

    from accounts.models import Organisation
    from accounts.service import list_keys
    from loa.db import make_engine, transaction

    settings = load_settings()
    with transaction(make_engine(settings.effective_database_url)) as session:
        orgs = {o.id: o.name for o in session.scalars(select(Organisation))}
        table = Table("organisation", "role", "name", "prefix", "created", "revoked")
        table.add_column("id", no_wrap=True, min_width=20)
        for k in list_keys(session):
            table.add_row(
                orgs.get(k.org_id, k.org_id),
                str(k.role),
                k.name,
                k.prefix + "…",
                k.created_at.isoformat(timespec="seconds"),
                k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "",
                k.id,
            )
    console = Console()
    if not console.is_terminal:
        console.width = 200  # scripts read the ids: never truncate them
    console.print(table)


@keys_app.command("revoke")
@clean_errors
def keys_revoke(key_id: str) -> None:
    from accounts.service import revoke_key
    from loa.db import make_engine, transaction
    from loa.errors import NotFound

    settings = load_settings()
    try:
        with transaction(make_engine(settings.effective_database_url)) as session:
            revoke_key(session, key_id)
    except NotFound as exc:
        fail(exc.message, 1)
    print(f"revoked {key_id}", file=sys.stderr)


# --- gateways --------------------------------------------------------------------------------
@gateways_app.command("check")
@clean_errors
def gateways_check() -> None:
    """Bind/connect to every configured gateway and report each."""
    from loa.gateway_check import check_all

    raise typer.Exit(check_all(load_settings()))


# --- simulators ------------------------------------------------------------------------------
@simulate_app.command("smsc")
def simulate_smsc(port: int = 2775, host: str = "127.0.0.1", receipt_delay: float = 0.2) -> None:
    """The built-in SMPP 3.4 SMSC simulator (accounts viettel, vinaphone, default)."""
    from gateways.smpp.simulator import demo_config, serve

    setup_logging("INFO")
    config = demo_config(port)
    config.host = host
    config.receipt_delay_s = (receipt_delay / 2, receipt_delay)
    serve(config)


@simulate_app.command("smtp")
def simulate_smtp(
    port: int = 2525,
    host: str = "127.0.0.1",
    stats_file: Path | None = typer.Option(None, help="write the received/connection counts here (JSON)"),
) -> None:
    """The built-in SMTP sink (aiosmtpd): accepts and counts every message."""
    from gateways.smtp.sink import SinkConfig, serve

    setup_logging("INFO")
    serve(SinkConfig(host=host, port=port, store=False), stats_file=stats_file)


@app.command()
@clean_errors
def bounces(port: int = 2526, host: str = "127.0.0.1") -> None:
    """A small SMTP receiver for bounces (DSNs): each is matched to its message and applied."""
    from loa.bounce_server import serve_bounces

    setup_logging("INFO")
    serve_bounces(load_settings(), host, port)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
