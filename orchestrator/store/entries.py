"""The remote's action entry objects: ``{"entry", "key"[, "sig"]}`` as canonical JSON.

A signature is HMAC-SHA256, with the team's key (``$DEPLOY_BUILD_CACHE_SIGNING_KEY``), over the
action key and the entry together, so that a signed entry cannot be replayed under another key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from orchestrator.hashing import canonical_json
from orchestrator.store.base import InvalidEntry

SIGNING_KEY_ENV = "DEPLOY_BUILD_CACHE_SIGNING_KEY"


class UntrustedEntry(InvalidEntry):
    """A remote action entry that a reader holding the signing key refuses."""


def signature(sign_key: bytes, key: str, entry: dict[str, Any]) -> str:
    body = canonical_json({"entry": entry, "key": key}).encode()
    return "hmac-sha256:" + hmac.new(sign_key, body, hashlib.sha256).hexdigest()


def encode_entry(key: str, entry: dict[str, Any], sign_key: bytes | None) -> bytes:
    doc: dict[str, Any] = {"entry": entry, "key": key}
    if sign_key:
        doc["sig"] = signature(sign_key, key, entry)
    return canonical_json(doc).encode()


def decode_entry(key: str, raw: bytes, sign_key: bytes | None) -> dict[str, Any]:
    """The entry in a remote object; InvalidEntry when malformed, UntrustedEntry when a reader
    with the signing key finds no signature or a wrong one."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError):
        raise InvalidEntry(f"remote entry not JSON ({raw[:40]!r})") from None
    if not (isinstance(doc, dict) and isinstance(doc.get("entry"), dict)):
        raise InvalidEntry("remote entry is not an {'entry': ...} object")
    if doc.get("key") != key:
        raise InvalidEntry(f"remote entry is stored under {key[:12]} but names key "
                           f"{str(doc.get('key'))[:12]}")
    if sign_key:
        sig = doc.get("sig")
        if not isinstance(sig, str):
            raise UntrustedEntry(f"remote entry {key[:12]} is unsigned and {SIGNING_KEY_ENV} is "
                                 "set: refused")
        if not hmac.compare_digest(sig, signature(sign_key, key, doc["entry"])):
            raise UntrustedEntry(f"remote entry {key[:12]} is signed with another key than "
                                 f"{SIGNING_KEY_ENV}: refused")
    entry: dict[str, Any] = doc["entry"]
    return entry
