"""Request ids: the client's `X-Request-ID` when sane and not a credential, else a new one."""

from __future__ import annotations

import os
import re

from litestar.types import Scope

from app.lib.logging.redaction import KEY_PATTERN

REQUEST_ID_HEADER = "x-request-id"
REQUEST_ID_HEADER_BYTES = REQUEST_ID_HEADER.encode()
# A client's id is echoed only when it is short and made of token characters (no spaces, quotes or controls),
# so it can neither break a log line nor smuggle a header.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
# Anything sent as a credential header.
_CREDENTIAL_HEADERS = (b"x-api-key", b"authorization")


def new_request_id() -> str:
    # 32 random hex digits, as uuid4().hex was, without building a UUID object (a few percent of a cached read).
    return os.urandom(16).hex()


def sane_request_id(value: str | bytes | None) -> str | None:
    """The client's id if it is sane (1-128 token characters), else None."""
    if value is None:
        return None
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    return value if _SANE_REQUEST_ID.fullmatch(value) else None


def _carries_a_credential(request_id: str, credentials: list[bytes]) -> bool:
    """An id shaped like an API key, or containing the credential this request presents (a bootstrap `API_KEY`
    can be any string): it would be echoed in a header and written to every log line, so it is not used."""
    if KEY_PATTERN.search(request_id):
        return True
    encoded = request_id.encode()
    return any(len(secret) >= 8 and secret in encoded for secret in credentials)


def request_id_from_scope(scope: Scope) -> str:
    """This request's id: the client's `X-Request-ID` when sane, else a new one; the same on every call."""
    state = scope.setdefault("state", {})
    request_id = state.get("request_id")
    if isinstance(request_id, str):
        return request_id
    credentials: list[bytes] = []
    for name, value in scope.get("headers", ()):
        if name == REQUEST_ID_HEADER_BYTES:
            request_id = sane_request_id(value)
        elif name in _CREDENTIAL_HEADERS:
            credentials.append(value.split(b" ", 1)[1].strip() if value[:7].lower() == b"bearer " else value.strip())
    if request_id is not None and _carries_a_credential(request_id, credentials):
        request_id = None
    request_id = request_id or new_request_id()
    state["request_id"] = request_id
    return request_id
