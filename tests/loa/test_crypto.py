"""SecretBox: AES-GCM tokens with a key id, bound to their record, readable after rotation."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from loa.crypto import SecretBox, SecretDecryptError

KEY = "first-secret-key-0123456789"
NEXT = "second-secret-key-9876543210"


def test_round_trip_with_a_fresh_nonce_each_time() -> None:
    box = SecretBox(KEY)
    first = box.encrypt("mật khẩu: Ωmega-1", "org:+84912345678")
    second = box.encrypt("mật khẩu: Ωmega-1", "org:+84912345678")
    assert first != second  # random nonce: equal secrets do not give equal tokens
    assert box.decrypt(first, "org:+84912345678") == box.decrypt(second, "org:+84912345678") == "mật khẩu: Ωmega-1"
    assert "Ωmega" not in first


def test_token_is_aes_gcm_under_the_hkdf_derived_key() -> None:
    """Checked against `cryptography` directly, so the format is what the docstring says."""
    box = SecretBox(KEY)
    token = box.encrypt("pw", "aad")
    kid, _, body = token.partition(".")
    assert kid == box.key_id
    assert len(kid) == 8
    raw = base64.urlsafe_b64decode(body)
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"loa secret fields v1").derive(KEY.encode())
    assert AESGCM(key).decrypt(raw[:12], raw[12:], b"aad") == b"pw"


def test_key_id_depends_on_the_key_only() -> None:
    assert SecretBox(KEY).key_id == SecretBox(KEY, [NEXT]).key_id != SecretBox(NEXT).key_id


def test_associated_data_binds_a_token_to_its_record() -> None:
    box = SecretBox(KEY)
    token = box.encrypt_fields({"password": "pw-1"}, "org-a:+84912345678")
    assert box.decrypt_fields(token, "org-a:+84912345678") == {"password": "pw-1"}
    for other in ("org-b:+84912345678", "org-a:+84987654321"):
        with pytest.raises(SecretDecryptError, match="does not match"):
            box.decrypt_fields(token, other)


def test_tampered_or_malformed_tokens_are_refused_without_echoing_them() -> None:
    box = SecretBox(KEY)
    token = box.encrypt("pw-secret", "aad")
    kid, _, body = token.partition(".")
    raw = bytearray(base64.urlsafe_b64decode(body))
    raw[-1] ^= 1
    tampered = f"{kid}.{base64.urlsafe_b64encode(bytes(raw)).decode()}"
    for bad in (tampered, f"{kid}.!!not-base64!!", f"{kid}.{base64.urlsafe_b64encode(b'short').decode()}", kid):
        with pytest.raises(SecretDecryptError) as caught:
            box.decrypt(bad, "aad")
        assert body not in str(caught.value)


def test_rotation_reads_old_tokens_and_writes_new_ones() -> None:
    old_box = SecretBox(KEY)
    token = old_box.encrypt_fields({"password": "pw-1"}, "aad")
    rotated = SecretBox(NEXT, [KEY])
    assert rotated.decrypt_fields(token, "aad") == {"password": "pw-1"}
    assert rotated.encrypt("x", "aad").startswith(SecretBox(NEXT).key_id + ".")
    with pytest.raises(SecretDecryptError, match=f"no key with id {old_box.key_id}.*LOA_OLD_SECRET_KEYS"):
        SecretBox(NEXT).decrypt(token, "aad")
