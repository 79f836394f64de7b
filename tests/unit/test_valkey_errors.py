"""A cluster's redirections and outages the client could not resolve are Valkey outages (503 VALKEY_UNAVAILABLE,
reads from Postgres), never a 500 (SPEC §11)."""

from __future__ import annotations

import pytest
from valkey.exceptions import (
    AskError,
    ClusterDownError,
    ClusterError,
    MasterDownError,
    MovedError,
    ReadOnlyError,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from app.lib.problems import is_valkey_unavailable
from app.lib.valkey.errors import VALKEY_ERRORS


@pytest.mark.parametrize(
    "error",
    [
        MovedError("3999 127.0.0.1:6381"),
        AskError("3999 127.0.0.1:6381"),
        ClusterDownError("CLUSTERDOWN The cluster is down"),
        MasterDownError("MASTERDOWN Link with MASTER is down"),
        TryAgainError("TRYAGAIN Multiple keys request during rehashing of slot"),
        ReadOnlyError("READONLY You can't write against a read only replica."),
        ClusterError("TTL exhausted."),
        SlotNotCoveredError('Slot "12" not covered by the cluster.'),
    ],
)
def test_cluster_errors_are_outages(error: Exception) -> None:
    assert isinstance(error, VALKEY_ERRORS)
    assert is_valkey_unavailable(error)
    with pytest.raises(RuntimeError) as wrapped:
        raise RuntimeError("wrapped") from error
    assert is_valkey_unavailable(wrapped.value)  # found anywhere in the chain


def test_a_plain_command_error_is_not_an_outage() -> None:
    assert not is_valkey_unavailable(ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
