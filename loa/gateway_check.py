"""`loa gateways check`: bind to every SMPP gateway and connect to every SMTP relay, one line each."""

from __future__ import annotations

import asyncio

from rich.console import Console

from loa.settings import Settings


def check_all(settings: Settings) -> int:
    from gateways.smpp.client import check_bind
    from gateways.smtp.relay import check_relay
    from workers.runtime import gateways_for
    from workers.send_email import relay_config
    from workers.smpp_runtime import bind_config

    console = Console(stderr=False, soft_wrap=True)  # one line per gateway, whatever the width
    gateways = gateways_for(settings)
    console.print(f"gateways from {gateways.source}")
    failures = 0
    for g in gateways.smpp:
        try:
            check_bind(bind_config(g))
            console.print(f"[green]ok[/]    smpp {g.name}: bound as {g.system_id} to {g.host}:{g.port} ({g.bind_mode})")
        except Exception as exc:
            failures += 1
            console.print(f"[red]FAIL[/]  smpp {g.name}: {exc}")
    for relay in gateways.smtp:
        try:
            summary = asyncio.run(check_relay(relay_config(relay)))
            console.print(f"[green]ok[/]    smtp {relay.name}: {summary}")
        except Exception as exc:
            failures += 1
            console.print(f"[red]FAIL[/]  smtp {relay.name}: {exc}")
    return 1 if failures else 0
