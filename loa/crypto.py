"""Encryption at rest of secret template fields (census credentials).

AES-256-GCM from `cryptography`; the key is derived from `LOA_SECRET_KEY` with HKDF-SHA256 and
identified by a short key id stored with each token, so data written under an older key
(`LOA_OLD_SECRET_KEYS`) can still be read after rotation.

A token is ``<key id>.<base64url(nonce ‖ ciphertext ‖ tag)>`` with a random 96-bit nonce per
token. The associated data (see :func:`campaigns.recipients.secret_aad`) binds a token to its
organisation and recipient, so a token copied onto another row does not decrypt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from collections.abc import Mapping, Sequence

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_INFO = b"loa secret fields v1"
_NONCE = 12


class SecretDecryptError(Exception):
    """A token could not be decrypted: unknown key id, or tampered / wrong associated data."""


def _derive(secret: str) -> tuple[str, AESGCM]:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_INFO).derive(secret.encode())
    kid = hashlib.sha256(key).hexdigest()[:8]
    return kid, AESGCM(key)


class SecretBox:
    """Encrypts with the current key; decrypts with the current or any old key."""

    def __init__(self, current: str, old: Sequence[str] = ()) -> None:
        self._kid, self._aead = _derive(current)
        self._keys = {self._kid: self._aead}
        for secret in old:
            kid, aead = _derive(secret)
            self._keys.setdefault(kid, aead)

    @property
    def key_id(self) -> str:
        return self._kid

    def encrypt(self, plaintext: str, aad: str) -> str:
        nonce = os.urandom(_NONCE)
        sealed = self._aead.encrypt(nonce, plaintext.encode(), aad.encode())
        return f"{self._kid}.{base64.urlsafe_b64encode(nonce + sealed).decode()}"

    def decrypt(self, token: str, aad: str) -> str:
        kid, _, body = token.partition(".")
        aead = self._keys.get(kid)
        if aead is None:
            raise SecretDecryptError(f"no key with id {kid} (set LOA_OLD_SECRET_KEYS)")
        try:
            raw = base64.urlsafe_b64decode(body)
            if len(raw) <= _NONCE:
                raise SecretDecryptError("secret token is truncated")
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], aad.encode()).decode()
        except (InvalidTag, binascii.Error, ValueError):
            # Never the token or the plaintext in the message: it may end up in an error column.
            raise SecretDecryptError("secret token does not match its key or record") from None

    def encrypt_fields(self, fields: Mapping[str, str], aad: str) -> str:
        return self.encrypt(json.dumps(dict(fields), ensure_ascii=False), aad)

    def decrypt_fields(self, token: str, aad: str) -> dict[str, str]:
        value = json.loads(self.decrypt(token, aad))
        if not isinstance(value, dict):
            raise SecretDecryptError("secret token does not hold fields")
        return {str(k): str(v) for k, v in value.items()}
