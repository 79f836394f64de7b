"""API keys never reach a log line: values shaped like a key are masked, secret-named fields blanked."""

from __future__ import annotations

import re
from collections.abc import Mapping

from structlog.typing import EventDict, WrappedLogger

# `aak_` keys (see app.domain.keys.hashing).
KEY_PATTERN = re.compile(r"aak_[A-Za-z0-9_-]{8,}")
_SECRET_FIELDS = frozenset({"authorization", "x-api-key", "api_key", "apikey", "password", "token"})


def mask(value: str) -> str:
    return KEY_PATTERN.sub("aak_***", value) if "aak_" in value else value


def redact_secrets(_logger: WrappedLogger, _method: str, event_dict: EventDict) -> EventDict:
    """Last line of defence: nothing that looks like an API key is written, whatever a caller logged."""
    for key, value in event_dict.items():
        if key.lower() in _SECRET_FIELDS:
            event_dict[key] = "***"
        elif isinstance(value, str):
            event_dict[key] = mask(value)
        elif isinstance(value, Mapping):
            event_dict[key] = {k: "***" if str(k).lower() in _SECRET_FIELDS else v for k, v in value.items()}
    return event_dict
