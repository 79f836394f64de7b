from __future__ import annotations

from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

# What a call to an unreachable or failing Valkey raises.
VALKEY_ERRORS: tuple[type[BaseException], ...] = (ValkeyConnectionError, ValkeyTimeoutError, OSError)
