"""The whole service as one process group (`loa run`, `loa demo`): embedded Redis when no
LOA_REDIS_URL, migrations, the built-in SMSC and SMTP simulators when no gateways file, then the
API, a worker for every role and the scheduler as child processes sharing one environment."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from accounts.models import Role
from accounts.service import any_key_exists, create_key, ensure_key, get_or_create_org
from gateways.config import SIM_SMPP_PORT, SIM_SMTP_PORT
from loa.db import make_engine, transaction
from loa.embedded import EmbeddedRedis
from loa.migrate import upgrade
from loa.settings import Settings

log = logging.getLogger(__name__)


def free_port(preferred: int | None = None) -> int:
    if preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.5)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def builtin_gateways_toml(smpp_port: int, smtp_port: int) -> str:
    """The gateways file for the built-in simulators (their passwords are the simulator's own)."""
    blocks = []
    for name, carriers, default in (
        ("viettel", '["Viettel"]', "false"),
        ("vinaphone", '["Vinaphone"]', "false"),
        ("default", "[]", "true"),
    ):
        blocks.append(
            f'[[smpp]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {smpp_port}\nsystem_id = "{name}"\n'
            f'password = "{name}-pw"\nbinds = 2\ntps = 500\nwindow = 10\ncarriers = {carriers}\n'
            f'default = {default}\nsource_addr = "TCTK"\nreceipt_id_base = "hex"\n'
        )
    blocks.append(f'[[smtp]]\nname = "sink"\nhost = "127.0.0.1"\nport = {smtp_port}\nconnections = 4\nrate = 2000\n')
    return "# Written by `loa run` for the built-in simulators.\n\n" + "\n".join(blocks)


class Stack:
    def __init__(
        self, settings: Settings, *, api_port: int | None = None, quiet: bool = False, worker_concurrency: int = 8
    ) -> None:
        self.settings = settings
        self.state_dir = settings.state_dir.resolve()
        self.api_port = api_port or settings.api_port
        self.quiet = quiet
        self.worker_concurrency = worker_concurrency
        self.env = dict(os.environ)
        self.children: list[tuple[str, subprocess.Popen[bytes]]] = []
        self.redis: EmbeddedRedis | None = None
        self.admin_key: str | None = None
        self.smsc_port: int | None = None
        self.smtp_port: int | None = None
        self.smtp_stats_file: Path | None = None  # the built-in sink's counts (JSON), when it runs
        self.stopping = False  # set by a signal once `catch_signals` ran, or when a child died

    # --- start ------------------------------------------------------------------------------
    def prepare(self) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.settings.redis_url:
            self.redis = EmbeddedRedis(self.state_dir)
            self.env["LOA_REDIS_URL"] = self.redis.start()
        current, _ = self.settings.secret_keys()  # generates .loa/secret.key on first run
        if not self.settings.secret_key:
            self.env["LOA_SECRET_KEY"] = current
        engine = make_engine(self.settings.effective_database_url)
        upgrade(engine)
        self.env["LOA_DATABASE_URL"] = self.settings.effective_database_url
        self._bootstrap_key(engine)
        engine.dispose()
        if self.settings.effective_gateways_file is None:
            self._start_simulators()

    def _bootstrap_key(self, engine: object) -> None:
        boot = self.settings.bootstrap_admin_key
        with transaction(engine) as session:  # type: ignore[arg-type]
            if boot is not None:
                ensure_key(session, boot.get_secret_value())
                self.admin_key = boot.get_secret_value()
            elif not any_key_exists(session):
                issued = create_key(session, get_or_create_org(session, "default"), Role.ADMIN, "first admin")
                self.admin_key = issued.key
                print(f"Created the first admin key (shown once, keep it):\n  {issued.key}", file=sys.stderr)
            elif not self.quiet:
                print(
                    "An admin key exists. Create more with: loa keys create --org default --role admin", file=sys.stderr
                )

    def _start_simulators(self) -> None:
        self.smsc_port = free_port(SIM_SMPP_PORT)
        self.smtp_port = free_port(SIM_SMTP_PORT)
        self._spawn("smsc", ["simulate", "smsc", "--port", str(self.smsc_port)])
        self.smtp_stats_file = self.state_dir / "smtp-sink.json"
        self.smtp_stats_file.unlink(missing_ok=True)  # counts of an earlier run must not be read
        self._spawn(
            "smtp-sink", ["simulate", "smtp", "--port", str(self.smtp_port), "--stats-file", str(self.smtp_stats_file)]
        )
        for port in (self.smsc_port, self.smtp_port):
            if not wait_port(port):
                raise RuntimeError(f"built-in simulator did not open port {port}")
        path = self.state_dir / "gateways.builtin.toml"
        path.write_text(builtin_gateways_toml(self.smsc_port, self.smtp_port))
        self.env["LOA_GATEWAYS_FILE"] = str(path)

    def start_services(self, *, api: bool = True) -> None:
        if api:
            self._spawn("api", ["api", "--port", str(self.api_port)])
        self._spawn("worker", ["worker", "--concurrency", str(self.worker_concurrency)])
        self._spawn("scheduler", ["scheduler"])
        if api and not self.wait_api() and not self.stopping:
            raise RuntimeError(f"the API did not answer on port {self.api_port}; see {self.state_dir / 'logs'}")

    def wait_api(self, timeout: float = 120.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.stopping:
            try:
                if httpx.get(f"http://127.0.0.1:{self.api_port}/healthz", timeout=1).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            if any(p.poll() is not None for _, p in self.children):
                return False
            time.sleep(0.2)
        return False

    def _spawn(self, name: str, args: list[str]) -> None:
        logs = self.state_dir / "logs"
        logs.mkdir(exist_ok=True)
        out = None if not self.quiet else open(logs / f"{name}.log", "ab")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "loa", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT if out else None,
        )
        self.children.append((name, proc))

    # --- run and stop -----------------------------------------------------------------------
    def catch_signals(self) -> None:
        """From now on SIGTERM and SIGINT ask `wait` to stop everything, even during start-up
        (the default action killed this process and left its children running)."""

        def handler(_signum: int, _frame: object) -> None:
            self.stopping = True

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def wait(self) -> int:
        """Block until a signal (see `catch_signals`) or a child dies; then stop everything."""
        code = 0
        while not self.stopping:
            for name, proc in self.children:
                if proc.poll() is not None:
                    print(f"loa: {name} exited with {proc.returncode}; stopping", file=sys.stderr)
                    self.stopping = True
                    code = 1
            time.sleep(0.3)
        self.stop()
        return code

    def stop(self) -> None:
        for _name, proc in reversed(self.children):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 20
        for _name, proc in reversed(self.children):
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.children.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None
