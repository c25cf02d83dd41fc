"""The `loa` command as a user runs it: clear one-line errors with exit 2, keys, db upgrade, and
`loa run` starting and stopping the whole embedded stack."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from loa.stack import free_port


def loa(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    base.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "loa", *args], cwd=cwd, env=base, capture_output=True, text=True, timeout=timeout
    )


def test_bad_setting_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = loa("db", "upgrade", cwd=tmp_path, env={"LOA_API_PORT": "eighty"})
    assert result.returncode == 2
    assert result.stderr.strip().startswith("loa: LOA_API_PORT:")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_worker_without_redis_says_what_to_do(tmp_path: Path) -> None:
    result = loa("worker", cwd=tmp_path)
    assert result.returncode == 2
    assert "LOA_REDIS_URL" in result.stderr
    assert "loa run" in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_gateways_file_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "gateways.toml").write_text(
        '[[smpp]]\nname = "viettel"\nhost = "127.0.0.1"\nport = 2775\nsystem_id = "v"\npassword = "p"\ncolour = "red"\n'
    )
    result = loa("gateways", "check", cwd=tmp_path)
    assert result.returncode == 2
    assert "gateways.toml: [[smpp]] 'viettel', key 'colour': unknown key" in result.stderr


def test_keys_create_prints_the_key_alone(tmp_path: Path) -> None:
    assert loa("db", "upgrade", cwd=tmp_path).returncode == 0
    created = loa("keys", "create", "--org", "gso", "--role", "operator", "--name", "ops", cwd=tmp_path)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert key.startswith("loa_")
    assert len(key) >= 40
    assert "\n" not in key
    listed = loa("keys", "list", cwd=tmp_path)
    assert "gso" in listed.stdout
    assert key not in listed.stdout
    key_id = next(line.split()[-2] for line in listed.stdout.splitlines() if "operator" in line)
    assert loa("keys", "revoke", key_id, cwd=tmp_path).returncode == 0
    assert loa("keys", "revoke", "key_nope", cwd=tmp_path).returncode == 1
    bad_role = loa("keys", "create", "--org", "gso", "--role", "root", cwd=tmp_path)
    assert bad_role.returncode == 2
    assert "--role" in bad_role.stderr


@pytest.mark.slow
def test_run_starts_everything_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LOA_")},
        "LOA_API_PORT": str(port),
        "LOA_BOOTSTRAP_ADMIN_KEY": "loa_test_bootstrap_key_0123456789abcdef",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "loa", "run"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).json()["redis"]:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            pytest.fail("loa run did not come up")
        resp = httpx.get(
            f"http://127.0.0.1:{port}/v1/gateways",
            headers={"Authorization": "Bearer loa_test_bootstrap_key_0123456789abcdef"},
        )
        assert {g["name"] for g in resp.json()["items"]} == {"viettel", "vinaphone", "default", "sink"}
        assert (tmp_path / ".loa" / "redis.sock").exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(40) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (tmp_path / ".loa" / "redis.sock").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
