"""The gateways file: one clear error naming the file, the gateway and the key for every mistake,
and `loa gateways check` binding to every SMPP gateway through the real CLI, one line each."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateways.config import GatewaysFileError, builtin_gateways, load_gateways
from gateways.smpp.simulator import Account, SimulatorConfig, Smsc, run_in_thread

GOOD = """
[[smpp]]
name = "viettel"
host = "127.0.0.1"
port = 2775
system_id = "viettel"
password = "secret"
carriers = ["Viettel"]
fallback = "vina"
failover = { after_s = 30, error_rate = 0.4 }
errors = { "0x45" = "transient" }

[[smpp]]
name = "vina"
host = "127.0.0.1"
port = 2775
system_id = "vina"
password_env = "LOA_TEST_VINA_PW"
default = true

[[smtp]]
name = "relay"
host = "127.0.0.1"
port = 2525
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateways.toml"
    path.write_text(text)
    return path


def test_a_good_file_loads_with_its_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOA_TEST_VINA_PW", "from-env")
    config = load_gateways(write(tmp_path, GOOD))
    viettel, vina = config.smpp
    assert (viettel.bind_mode, viettel.binds, viettel.window, viettel.receipt_id_base) == ("transceiver", 1, 10, "auto")
    assert viettel.error_overrides() == {0x45: "transient"}
    assert vina.resolved_password() == "from-env"
    assert config.route_table() == ({"viettel": "viettel"}, "vina")
    assert "STOP" in viettel.opt_out_keywords


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            ('carriers = ["Viettel"]\n', 'carriers = ["Viettel"]\nbind = 2\n'),
            "[[smpp]] 'viettel', key 'bind': unknown key",
        ),
        (('name = "vina"', 'name = "viettel"'), "duplicate gateway name 'viettel'"),
        (('password = "secret"\n', ""), "[[smpp]] 'viettel': password (or password_env) is required"),
        (('fallback = "vina"', 'fallback = "mobi"'), "fallback 'mobi' is not an SMPP gateway in this file"),
        (('fallback = "vina"', 'fallback = "viettel"'), "fallback names the gateway itself"),
        (('"0x45" = "transient"', '"0x4G" = "transient"'), "error code '0x4G'"),
        (("port = 2525", "port = 0"), "[[smtp]] 'relay', key 'port'"),
        (
            ('host = "127.0.0.1"\nport = 2775\nsystem_id = "viettel"', 'port = 2775\nsystem_id = "viettel"'),
            "[[smpp]] 'viettel', key 'host': required key is missing",
        ),
        (("[[smtp]]", "speed = 3\n[[smtp]]"), "key 'speed': unknown key"),
    ],
)
def test_every_mistake_is_one_error_naming_file_gateway_and_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, str], message: str
) -> None:
    monkeypatch.setenv("LOA_TEST_VINA_PW", "x")
    assert change[0] in GOOD
    text = GOOD.replace(change[0], change[1], 1)
    path = write(tmp_path, text)
    with pytest.raises(GatewaysFileError) as err:
        load_gateways(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_password_env_must_name_a_set_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOA_TEST_VINA_PW", raising=False)
    with pytest.raises(GatewaysFileError, match="\\[\\[smpp\\]\\] 'vina': password_env names 'LOA_TEST_VINA_PW'"):
        load_gateways(write(tmp_path, GOOD))


def test_unreadable_and_malformed_files_say_so(tmp_path: Path) -> None:
    with pytest.raises(GatewaysFileError, match="cannot read"):
        load_gateways(tmp_path / "missing.toml")
    with pytest.raises(GatewaysFileError, match="not valid TOML"):
        load_gateways(write(tmp_path, "[[smpp]\nname="))


def test_the_builtin_gateways_are_two_carriers_and_a_default() -> None:
    config = builtin_gateways()
    assert config.route_table() == ({"viettel": "viettel", "vinaphone": "vinaphone"}, "default")


# --- `loa gateways check` through the real CLI -----------------------------------------------
@pytest.fixture
def smsc() -> Iterator[Smsc]:
    accounts = [Account("good", "good-pw"), Account("banned", "banned-pw", fail_bind=True)]
    with run_in_thread(SimulatorConfig(port=0, accounts=accounts)) as sim:
        yield sim


def cli(tmp_path: Path, *args: str, gateways: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOA_")}
    env.update({"LOA_GATEWAYS_FILE": str(gateways), "LOA_STATE_DIR": str(tmp_path / "state")})
    return subprocess.run(
        [sys.executable, "-m", "loa", *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
    )


def test_gateways_check_binds_to_each_gateway_and_reports_each(tmp_path: Path, smsc: Smsc) -> None:
    closed = _closed_port()
    text = "".join(
        f'[[smpp]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {port}\nsystem_id = "{sid}"\npassword = "{pw}"\n\n'
        for name, port, sid, pw in (
            ("good", smsc.port, "good", "good-pw"),
            ("wrongpw", smsc.port, "good", "nope"),
            ("banned", smsc.port, "banned", "banned-pw"),
            ("down", closed, "good", "good-pw"),
        )
    )
    result = cli(tmp_path, "gateways", "check", gateways=write(tmp_path, text))
    lines = {
        line.split()[2].rstrip(":"): line for line in result.stdout.splitlines() if line.startswith(("ok", "FAIL"))
    }
    assert result.returncode == 1, result.stdout + result.stderr
    assert lines["good"].startswith("ok")
    assert "bound as good" in lines["good"]
    assert lines["wrongpw"].startswith("FAIL")
    assert "ESME_RINVPASWD" in lines["wrongpw"]
    assert lines["banned"].startswith("FAIL")
    assert "ESME_RBINDFAIL" in lines["banned"]
    assert lines["down"].startswith("FAIL")
    assert f"127.0.0.1:{closed}" in lines["down"]
    assert "nope" not in result.stdout + result.stderr, "a password was printed"
    assert smsc.stats.sessions("good") == 0, "the check left a session bound"


def test_gateways_check_passes_when_every_gateway_binds(tmp_path: Path, smsc: Smsc) -> None:
    text = (
        f'[[smpp]]\nname = "good"\nhost = "127.0.0.1"\nport = {smsc.port}\nsystem_id = "good"\npassword = "good-pw"\n'
    )
    result = cli(tmp_path, "gateways", "check", gateways=write(tmp_path, text))
    assert result.returncode == 0, result.stdout + result.stderr
    assert smsc.stats.max_sessions("good") == 1


def test_a_broken_gateways_file_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    path = write(tmp_path, '[[smpp]]\nname = "x"\nhost = "h"\nport = 1\nsystem_id = "x"\npasword = "typo"\n')
    result = cli(tmp_path, "gateways", "check", gateways=path)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "key 'pasword': unknown key" in result.stderr


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
