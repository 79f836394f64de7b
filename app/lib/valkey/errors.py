from __future__ import annotations

from valkey.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    ReadOnlyError,
    SlotNotCoveredError,
    TryAgainError,
)
from valkey.exceptions import ConnectionError as ValkeyConnectionError
from valkey.exceptions import TimeoutError as ValkeyTimeoutError

# What Valkey itself raises when it cannot serve now: unreachable or hung, and on a cluster the redirections and
# outages the client could not resolve (MOVED/ASK still pointing at a dead node, CLUSTERDOWN, TRYAGAIN during a
# failover or resharding, a write reaching a primary just demoted, slots not covered).
VALKEY_OUTAGE_ERRORS: tuple[type[BaseException], ...] = (
    ValkeyConnectionError,
    ValkeyTimeoutError,
    ClusterDownError,
    ClusterError,
    TryAgainError,
    AskError,  # and MovedError
    ReadOnlyError,
    SlotNotCoveredError,
)

# What a call to an unreachable or failing Valkey raises.
VALKEY_ERRORS: tuple[type[BaseException], ...] = (*VALKEY_OUTAGE_ERRORS, OSError)
