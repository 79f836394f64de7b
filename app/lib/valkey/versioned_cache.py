"""`VersionedCache`: cache-aside values that carry a version; a write never replaces a newer version.

Values are JSON objects with a numeric `version` member. Deletes leave a tombstone with an
unbeatable version for a while, so a reader that loaded the row just before the delete cannot re-cache it.
"""

from __future__ import annotations

from app.lib.valkey.client import ValkeyClient, register_script
from app.lib.valkey.pipelined_get import KeyGetter, ScriptArg
from app.lib.valkey.timeouts import bounded

TOMBSTONE = b'{"version":9007199254740991,"deleted":true}'

_SET_IF_NEWER = """
local cur = redis.call('get', KEYS[1])
if cur then
  local ok, decoded = pcall(cjson.decode, cur)
  local version = ok and type(decoded) == 'table' and tonumber(decoded['version'])
  if version and version >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class VersionedCache:
    def __init__(
        self, client: ValkeyClient, *, ttl: int, tombstone_ttl: int = 300, getter: KeyGetter | None = None
    ) -> None:
        self._client = client
        self._getter = getter
        self.ttl = ttl
        self.tombstone_ttl = tombstone_ttl
        self._set_if_newer = register_script(client, _SET_IF_NEWER)

    async def get(self, key: str) -> bytes | None:
        async with bounded():
            value: bytes | None = await (self._getter.get(key) if self._getter else self._client.get(key))
        return value

    async def set_if_newer(self, key: str, version: int, payload: bytes) -> bool:
        args: list[ScriptArg] = [version, payload, self.ttl]
        async with bounded():
            if self._getter is not None:
                script = self._set_if_newer
                return bool(await self._getter.eval_script(script.sha, script.source, [key], args))
            return bool(await self._set_if_newer(keys=[key], args=args))

    async def invalidate(self, key: str) -> None:
        async with bounded():
            await self._client.delete(key)

    async def tombstone(self, key: str) -> None:
        async with bounded():
            await self._client.set(key, TOMBSTONE, ex=self.tombstone_ttl)

    async def ping(self) -> None:
        async with bounded():
            await self._client.ping()

    @staticmethod
    def is_tombstone(value: bytes) -> bool:
        return value == TOMBSTONE
