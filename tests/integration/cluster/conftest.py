"""The cluster variant of the test servers: the same Postgres, and a real 3-primary/3-replica Valkey Cluster
(tests/cluster.py) with `VALKEY_CLUSTER=true` instead of the single embedded Valkey. Every test under this
directory is marked `cluster` (run by default; `-m "not cluster"` skips them)."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from valkey.asyncio.cluster import ValkeyCluster

from tests.cluster import ValkeyTestCluster
from tests.servers import TestServers

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def valkey_cluster() -> Iterator[ValkeyTestCluster]:
    cluster = ValkeyTestCluster.start()
    yield cluster
    cluster.close()


@pytest.fixture(scope="session")
def servers(servers: TestServers, valkey_cluster: ValkeyTestCluster) -> TestServers:
    """The session's Postgres with the cluster instead of the single Valkey (no Valkey fault injection here: the
    single-node stop/pause helpers would act on the other server)."""
    return dataclasses.replace(servers, valkey_url=valkey_cluster.url, valkey_cluster=True, _valkey_dir=None)


@pytest.fixture
async def valkey(servers: TestServers) -> AsyncIterator[ValkeyCluster]:
    client = ValkeyCluster.from_url(servers.valkey_url)
    yield client
    await client.aclose()
