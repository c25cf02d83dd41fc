"""DkimSigner output verified by dkimpy's independent verifier (DNS answered in-process)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateways.smtp.dkim import DkimKeyError, DkimSigner, load_signer, public_dns_record
from gateways.smtp.message import EmailTemplateParts, MessageBuilder

DOMAIN = "gso.gov.vn"
SELECTOR = "loa2025"


def rsa_pem(fmt: serialization.PrivateFormat = serialization.PrivateFormat.PKCS8) -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption())


def ed25519_pem() -> bytes:
    key = ed25519.Ed25519PrivateKey.generate()
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def dns_for(key_pem: bytes) -> Callable[..., bytes]:
    record = public_dns_record(key_pem).encode()

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes:
        assert name == f"{SELECTOR}._domainkey.{DOMAIN}.".encode()
        return record

    return dnsfunc


def needs_nacl(algorithm: str) -> None:
    if algorithm == "ed25519":
        pytest.importorskip("nacl", reason="dkimpy verifies ed25519 only with PyNaCl (dev dependency)")


@pytest.fixture(scope="module")
def keys() -> dict[str, bytes]:
    # RSA generation is slow; one key of each kind serves the whole module.
    return {
        "rsa-pkcs8": rsa_pem(),
        "rsa-pkcs1": rsa_pem(serialization.PrivateFormat.TraditionalOpenSSL),
        "ed25519": ed25519_pem(),
    }


def campaign_message() -> bytes:
    builder = MessageBuilder(
        "Tổng cục Thống kê <tongdieutra@gso.gov.vn>", list_unsubscribe="https://gso.gov.vn/u/{message_key}"
    )
    parts = EmailTemplateParts("Thông tin đăng nhập – đơn vị HN-0042", None, "<p>Mật khẩu: <b>x7#Qk9!</b></p>")
    return builder.build("a.nguyen@thudo.vn", parts, message_key="m42").data


@pytest.mark.parametrize("kind", ["rsa-pkcs8", "rsa-pkcs1", "ed25519"])
def test_signed_campaign_message_verifies(keys: dict[str, bytes], kind: str) -> None:
    needs_nacl(kind)
    signer = DkimSigner(DOMAIN, SELECTOR, keys[kind])

    signed = signer.sign(campaign_message())

    assert signer.algorithm == ("ed25519-sha256" if kind == "ed25519" else "rsa-sha256")
    assert signed.startswith(b"DKIM-Signature: v=1; a=" + signer.algorithm.encode())
    assert max(len(line) for line in signed.split(b"\r\n")) <= 78
    assert dkim.verify(signed, dnsfunc=dns_for(keys[kind]))


@pytest.mark.parametrize("kind", ["rsa-pkcs8", "ed25519"])
def test_tampering_breaks_the_signature(keys: dict[str, bytes], kind: str) -> None:
    needs_nacl(kind)
    signed = DkimSigner(DOMAIN, SELECTOR, keys[kind]).sign(campaign_message())
    dnsfunc = dns_for(keys[kind])
    head, _, body = signed.partition(b"\r\n\r\n")
    assert dkim.verify(signed, dnsfunc=dnsfunc)

    changed_body = head + b"\r\n\r\n" + body.replace(b"text/html", b"text/plain", 1)
    # Verifiers pick header instances bottom-up, so a Subject added *above* the signed one
    # would pass unnoticed; over-signing (h= lists subject twice) makes it count.
    extra_subject = b"Subject: =?utf-8?b?VHLDum5nIHRoxrDhu59uZw==?=\r\n" + signed
    changed_to = signed.replace(b"To: a.nguyen@thudo.vn", b"To: attacker@evil.example", 1)

    assert not dkim.verify(changed_body, dnsfunc=dnsfunc)
    assert not dkim.verify(extra_subject, dnsfunc=dnsfunc)
    assert not dkim.verify(changed_to, dnsfunc=dnsfunc)


@pytest.mark.parametrize(
    "message",
    [
        # Folded headers, whitespace runs, tabs, upper-case names, trailing whitespace.
        b"FROM: Someone <a@gso.gov.vn>\r\nTo:  x@y.vn ,\r\n\t z@y.vn\r\nSubject:\t Hello   world \r\n"
        b"\r\nline with  spaces  \t \r\n\tindented\r\n",
        # Empty lines at the end of the body are ignored by relaxed canonicalisation.
        b"From: a@gso.gov.vn\r\nSubject: x\r\n\r\nbody\r\n\r\n\r\n \r\n",
        # Bare LF line endings are normalised to CRLF before signing.
        b"From: a@gso.gov.vn\nSubject: lf\n\nbody line\n",
        # No body at all.
        b"From: a@gso.gov.vn\r\nSubject: empty\r\n",
        # Repeated header: both instances are signed.
        b"From: a@gso.gov.vn\r\nTo: one@y.vn\r\nTo: two@y.vn\r\n\r\nx\r\n",
    ],
)
def test_canonicalisation_matches_dkimpy(keys: dict[str, bytes], message: bytes) -> None:
    signed = DkimSigner(DOMAIN, SELECTOR, keys["rsa-pkcs8"]).sign(message)

    assert b"\n" not in signed.replace(b"\r\n", b"")
    assert dkim.verify(signed, dnsfunc=dns_for(keys["rsa-pkcs8"]))


def test_message_without_from_is_refused(keys: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="From"):
        DkimSigner(DOMAIN, SELECTOR, keys["ed25519"]).sign(b"Subject: x\r\n\r\nbody\r\n")


def test_public_dns_records(keys: dict[str, bytes]) -> None:
    assert public_dns_record(keys["ed25519"]).startswith("v=DKIM1; k=ed25519; p=")
    assert len(public_dns_record(keys["ed25519"]).split("p=")[1]) == 44  # 32 raw bytes, base64
    assert public_dns_record(keys["rsa-pkcs1"]).startswith("v=DKIM1; k=rsa; p=MIIBIjAN")


def test_load_signer_from_file(tmp_path: Path, keys: dict[str, bytes]) -> None:
    key_file = tmp_path / "dkim.pem"
    key_file.write_bytes(keys["ed25519"])

    signer = load_signer(DOMAIN, SELECTOR, key_file)

    assert signer.algorithm == "ed25519-sha256"
    assert signer.domain == DOMAIN


def test_load_signer_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "missing.pem"
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    not_pem = tmp_path / "key.der"
    not_pem.write_bytes(b"\x30\x82\x01\x00")
    ec_key = tmp_path / "ec.pem"
    ec_key.write_bytes(
        ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    encrypted = tmp_path / "encrypted.pem"
    encrypted.write_bytes(
        ed25519.Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"pass"),
        )
    )

    cases = [
        (missing, "cannot read"),
        (garbage, "cannot parse"),
        (not_pem, "not a PEM private key"),
        (ec_key, "unsupported key type"),
        (encrypted, "encrypted"),
    ]
    for path, reason in cases:
        with pytest.raises(DkimKeyError, match=reason) as info:
            load_signer(DOMAIN, SELECTOR, path)
        assert str(path) in str(info.value)


def test_invalid_selector_is_refused(keys: dict[str, bytes]) -> None:
    with pytest.raises(ValueError, match="selector"):
        DkimSigner(DOMAIN, "bad; selector", keys["ed25519"])
