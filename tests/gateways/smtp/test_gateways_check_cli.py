"""`loa gateways check` for SMTP relays, run as the command a user types, against real aiosmtpd
sinks: plain, STARTTLS with AUTH, implicit TLS with AUTH, and the failures an operator must be told
about (wrong password, untrusted certificate, nobody listening)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from gateways.smtp.sink import SinkConfig, SmtpSink
from tests.gateways.smtp.conftest import CREDENTIALS, free_port


def relay_block(
    name: str, port: int, *, tls: str = "none", auth: tuple[str, str] | None = None, ca: Path | None = None
) -> str:
    lines = [f'[[smtp]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\ntls = "{tls}"']
    if auth:
        lines.append(f'username = "{auth[0]}"\npassword = "{auth[1]}"')
    if ca:
        lines.append(f'ca_file = "{ca}"')
    return "\n".join(lines) + "\n"


def check(tmp_path: Path, gateways: str) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "gateways.toml"
    path.write_text(gateways)
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env |= {"LOA_GATEWAYS_FILE": str(path), "LOA_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "250"}
    return subprocess.run(
        [sys.executable, "-m", "loa", "gateways", "check"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def line_for(output: str, relay: str) -> str:
    return next(line for line in output.splitlines() if f"smtp {relay}:" in line)


def test_check_reports_each_relay_with_tls_and_auth_and_fails_clearly(tmp_path: Path) -> None:
    # One run of the command for all cases: starting `loa` is the slow part.
    with (
        SmtpSink(SinkConfig(port=0)) as plain,
        SmtpSink(SinkConfig(port=0, require_starttls=True, auth=CREDENTIALS)) as starttls,
        SmtpSink(SinkConfig(port=0, implicit_tls=True, auth=CREDENTIALS)) as implicit,
    ):
        good = (
            relay_block("plain", plain.port)
            + relay_block("starttls", starttls.port, tls="starttls", auth=CREDENTIALS, ca=starttls.tls_cert_path)
            + relay_block("smtps", implicit.port, tls="tls", auth=CREDENTIALS, ca=implicit.tls_cert_path)
        )
        bad = (
            relay_block(
                "wrongpw", starttls.port, tls="starttls", auth=(CREDENTIALS[0], "not-it"), ca=starttls.tls_cert_path
            )
            + relay_block("untrusted", starttls.port, tls="starttls", auth=CREDENTIALS)
            + relay_block("nobody", free_port())
        )
        result = check(tmp_path, good + bad)
        # Each check is one EHLO (and TLS, AUTH) on one connection, then QUIT: nothing is sent.
        assert plain.connections_opened == implicit.connections_opened == 1
        assert starttls.connections_opened == 3  # starttls, wrongpw, untrusted
        assert plain.count + starttls.count + implicit.count == 0
    output = result.stdout
    assert result.returncode == 1, output + result.stderr  # any failure: exit 1
    assert "no TLS, no AUTH" in line_for(output, "plain")
    for relay in ("plain", "starttls", "smtps"):
        line = line_for(output, relay)
        assert line.lstrip().startswith("ok"), line
        assert "EHLO answered by" in line
    for relay in ("starttls", "smtps"):
        assert "TLS TLSv1." in line_for(output, relay)
        assert f"AUTH as {CREDENTIALS[0]}" in line_for(output, relay)
    assert "authentication as 'loa-relay' rejected" in line_for(output, "wrongpw")
    assert "certificate not trusted" in line_for(output, "untrusted")
    assert "cannot connect" in line_for(output, "nobody")
    for relay in ("wrongpw", "untrusted", "nobody"):
        assert line_for(output, relay).lstrip().startswith("FAIL")
    assert CREDENTIALS[1] not in output + result.stderr  # passwords are never printed
    assert "not-it" not in output + result.stderr
