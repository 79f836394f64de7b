"""`DistributedLock` waiters are woken by the release (FIFO, from the wake list), not by a sleeping backoff."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from valkey.asyncio import Valkey

from app.lib.valkey.lock import DistributedLock, LockTimeoutError, wake_key
from tests.helpers import wait_for


async def _blocked_clients(valkey: Valkey) -> int:
    return int((await valkey.info("clients"))["blocked_clients"])


async def test_waiters_get_the_lock_in_arrival_order_when_it_is_released(valkey: Valkey) -> None:
    # A poll as long as the test: only a release can wake a waiter in time.
    lock = DistributedLock(valkey, ttl_ms=60_000, timeout=60.0, poll=60.0)
    key = f"agentapi:{{{uuid.uuid4()}}}:lock"
    token = await lock.acquire(key)
    order: list[int] = []
    base = await _blocked_clients(valkey)

    async def waiter(n: int) -> str:
        got = await lock.acquire(key)
        order.append(n)
        return got

    tasks = []
    for n in range(3):
        # Each waiter starts only once the one before it blocks: their arrival order is known.
        tasks.append(asyncio.create_task(waiter(n)))
        await wait_for(lambda n=n: _count_at_least(valkey, base + n + 1), timeout=5, what=f"waiter {n} blocked")
    held = token
    for n in range(3):
        assert await lock.release(key, held)
        held = await asyncio.wait_for(tasks[n], 5)
        assert order == list(range(n + 1))
    assert await lock.release(key, held)
    assert not await valkey.exists(key)
    # At most one pending wake-up is kept, and it expires with the lock's TTL.
    assert await valkey.llen(wake_key(key)) <= 1
    assert 0 < await valkey.pttl(wake_key(key)) <= 60_000


async def _count_at_least(valkey: Valkey, n: int) -> bool:
    return await _blocked_clients(valkey) >= n


async def test_a_lock_that_expires_is_taken_after_its_ttl_and_a_timeout_still_raises(valkey: Valkey) -> None:
    key = f"agentapi:{{{uuid.uuid4()}}}:lock"
    # The holder "dies": nobody releases, the TTL frees the lock, the waiter's poll notices.
    assert await valkey.set(key, "dead-holder", px=300)
    lock = DistributedLock(valkey, ttl_ms=5_000, timeout=5.0, poll=0.05)
    token = await asyncio.wait_for(lock.acquire(key), 5)
    assert await valkey.get(key) == token.encode()
    impatient = DistributedLock(valkey, timeout=0.2, poll=0.05)
    with pytest.raises(LockTimeoutError):
        await impatient.acquire(key)
    assert await lock.release(key, token)
    # A wrong token frees nothing.
    other = await lock.acquire(key)
    assert not await lock.release(key, "not-the-token")
    assert await lock.release(key, other)


async def test_lock_keys_without_a_hash_tag_are_refused(valkey: Valkey) -> None:
    with pytest.raises(ValueError, match="hash tag"):
        await DistributedLock(valkey).acquire("agentapi:untagged:lock")
